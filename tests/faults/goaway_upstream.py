#!/usr/bin/python3
"""An HTTP/2 upstream that answers the first call it is sent with GOAWAY
(last stream id 0: "I saw none of your streams") and then goes away for good:
its connections close and nothing listens on its port any more.

A gRPC client may retry such a call transparently, since the upstream
provably never saw it; this peer makes that retry find no connection.

Prints "PORT=<port>" once listening on 127.0.0.1. Exits after the GOAWAY, or
after 60 s, whichever comes first.
"""
import selectors
import socket
import time

import h2.config
import h2.connection
import h2.events

LIFETIME_SECONDS = 60


def main():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    print(f"PORT={listener.getsockname()[1]}", flush=True)

    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    config = h2.config.H2Configuration(client_side=False, header_encoding=None)
    deadline = time.monotonic() + LIFETIME_SECONDS
    while time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            if key.data is None:
                sock, _ = listener.accept()
                conn = h2.connection.H2Connection(config=config)
                conn.initiate_connection()
                sock.sendall(conn.data_to_send())
                selector.register(sock, selectors.EVENT_READ, conn)
                continue
            sock, conn = key.fileobj, key.data
            data = sock.recv(65536)
            if not data:
                selector.unregister(sock)
                sock.close()
                continue
            events = conn.receive_data(data)
            if any(isinstance(event, h2.events.RequestReceived) for event in events):
                conn.close_connection(error_code=0, last_stream_id=0)
                sock.sendall(conn.data_to_send())
                # Stop listening first, so a reconnect is refused.
                listener.close()
                time.sleep(0.2)
                for other in list(selector.get_map().values()):
                    if other.data is not None:
                        other.fileobj.close()
                return
            sock.sendall(conn.data_to_send())


if __name__ == "__main__":
    main()
