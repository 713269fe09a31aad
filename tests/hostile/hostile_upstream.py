#!/usr/bin/python3
"""A hostile HTTP/2 upstream for poolside's pool (tests/hostile; measurement).

Listens on 127.0.0.1 (port 0: any free one), prints "PORT=<n>", and answers
every request stream with HEADERS that never end: an endless CONTINUATION
flood (--attack continuation), or with a frame the HTTP/2 codec must reject
(--attack bad_frame: a SETTINGS frame whose length is not a multiple of six,
a connection error). Runs at most --seconds, then exits. Prints one JSON line
per connection it served: how many bytes it flooded and whether the client
closed the connection.
"""
import argparse
import json
import select
import socket
import sys
import threading
import time

from hpack import Encoder
from hyperframe.frame import (ContinuationFrame, Frame, HeadersFrame, SettingsFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def serve(conn, args, deadline, lock):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    inbox = b""
    flooded = 0
    closed = False
    answering = None
    conn.sendall(SettingsFrame(0, settings={}).serialize())
    encoder = Encoder()
    try:
        while time.monotonic() < deadline and not closed:
            ready, _, _ = select.select([conn], [], [], 0 if answering else 0.1)
            if ready:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    closed = True
                    break
                inbox += chunk
                if inbox.startswith(PREFACE):
                    inbox = inbox[len(PREFACE):]
                while len(inbox) >= 9:
                    length = int.from_bytes(inbox[:3], "big")
                    if len(inbox) < 9 + length:
                        break
                    frame, _ = Frame.parse_frame_header(memoryview(inbox[:9]))
                    if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                        conn.sendall(SettingsFrame(0, flags=["ACK"]).serialize())
                    if isinstance(frame, HeadersFrame) and answering is None:
                        answering = frame.stream_id
                        block = encoder.encode([(":status", "200"),
                                                ("content-type", "application/grpc")])
                        conn.sendall(HeadersFrame(answering, block).serialize())
                    inbox = inbox[9 + length:]
            if answering is not None and args.attack == "bad_frame":
                # FRAME_SIZE_ERROR: the client must close the connection.
                conn.sendall(b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + b"\x00" * 5)
                flooded += 14
                answering = None
            if answering is not None:
                # Never END_HEADERS.
                payload = b"\x00" * 16384
                conn.sendall(b"".join(ContinuationFrame(answering, payload).serialize()
                                      for _ in range(16)))
                flooded += 16 * 16384
    except OSError:
        closed = True
    with lock:
        print(json.dumps({"flooded_bytes": flooded, "closed_by_client": closed}), flush=True)
    conn.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--attack", choices=["continuation", "bad_frame"], default="continuation")
    args = parser.parse_args()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(64)
    print("PORT=%d" % listener.getsockname()[1], flush=True)
    deadline = time.monotonic() + args.seconds
    lock = threading.Lock()
    threads = []
    listener.settimeout(0.1)
    while time.monotonic() < deadline and len(threads) < 64:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        thread = threading.Thread(target=serve, args=(conn, args, deadline, lock), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()) + 2)
    listener.close()


if __name__ == "__main__":
    main()
