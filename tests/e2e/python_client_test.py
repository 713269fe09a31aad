#!/usr/bin/env python3
"""poolside driven by a second gRPC implementation: python3-grpcio.

Starts the test_upstream binary and poolside in front of it, then runs the
same raw-bytes calls (no protobuf: request_serializer and
response_deserializer are None) against the upstream directly and through
poolside, for every call shape, metadata both ways, a non-OK status with
details and a deadline. Both processes are always stopped. Exits non-zero
on any failure.

    python_client_test.py --poolside build/poolside \
        --upstream build/tests/support/test_upstream
"""

import argparse
import ctypes
import os
import random
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time

import grpc

UNARY = "/poolside.test.Echo/Unary"
SERVER_STREAM = "/poolside.test.Echo/ServerStream"
CLIENT_STREAM = "/poolside.test.Echo/ClientStream"
BIDI = "/poolside.test.Echo/Bidi"

CALL_TIMEOUT_S = 10
START_TIMEOUT_S = 10
PR_SET_PDEATHSIG = 1


class CheckFailed(Exception):
    pass


def expect(condition, what):
    if not condition:
        raise CheckFailed(what)


def die_with_parent():
    """Runs in the child before exec: the kernel kills it if we die."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_upstream(path):
    process = subprocess.Popen(
        [path, "--port", "0"], stdout=subprocess.PIPE, preexec_fn=die_with_parent
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        readable, _, _ = select.select([process.stdout], [], [], max(remaining, 0))
        if not readable:
            raise CheckFailed("test_upstream printed no PORT= line in time")
        chunk = os.read(process.stdout.fileno(), 1)
        if not chunk:
            raise CheckFailed("test_upstream exited before printing its port")
        line += chunk
    expect(line.startswith(b"PORT="), "unexpected test_upstream output %r" % line)
    return process, int(line[len(b"PORT="):])


def start_poolside(path, upstream_port, log, forwarder="grpc"):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    env.update(
        GRPC_UPSTREAM_TARGET="127.0.0.1:%d" % upstream_port,
        GRPC_LISTEN_ADDR="127.0.0.1:%d" % free_port(),
        GRPC_ADMIN_ADDR="127.0.0.1:%d" % free_port(),
        GRPC_CONNECTION_POOL_SIZE="3",
        GRPC_FORWARDER=forwarder,
    )
    process = subprocess.Popen(
        [path], env=env, stdout=log, stderr=log, preexec_fn=die_with_parent
    )
    return process, env["GRPC_LISTEN_ADDR"]


def stop(process):
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def values(metadata, key):
    return [m.value for m in (metadata or ()) if m.key == key]


def check_unary(channel, rng):
    call = channel.unary_unary(UNARY)
    for size in (0, 1, 1000, 100000, 3 << 20):
        request = rng.randbytes(size)
        response = call(request, timeout=CALL_TIMEOUT_S)
        expect(response == request, "unary: %d bytes came back changed" % size)


def check_metadata(channel, rng):
    header_bytes = rng.randbytes(50) + b"\x00\xff"
    trailer_bytes = rng.randbytes(50) + b"\x00"
    metadata = (
        ("x-echo-text", "hello from python"),
        ("x-echo-data-bin", header_bytes),
        ("x-trailer-text", "goodbye"),
        ("x-trailer-data-bin", trailer_bytes),
    )
    response, call = channel.unary_unary(UNARY).with_call(
        b"m", metadata=metadata, timeout=CALL_TIMEOUT_S
    )
    expect(response == b"m", "metadata: response changed")
    initial, trailing = call.initial_metadata(), call.trailing_metadata()
    expect(values(initial, "x-echo-text") == ["hello from python"], "ascii header: %r" % (initial,))
    expect(values(initial, "x-echo-data-bin") == [header_bytes], "binary header: %r" % (initial,))
    expect(values(trailing, "x-trailer-text") == ["goodbye"], "ascii trailer: %r" % (trailing,))
    expect(
        values(trailing, "x-trailer-data-bin") == [trailer_bytes],
        "binary trailer: %r" % (trailing,),
    )


def check_server_stream(channel, rng):
    request = rng.randbytes(5000)
    responses = list(
        channel.unary_stream(SERVER_STREAM)(
            request, metadata=(("x-response-count", "4"),), timeout=CALL_TIMEOUT_S
        )
    )
    expect(responses == [request] * 4, "server stream: got %d messages" % len(responses))


def check_client_stream(channel, rng):
    requests = [rng.randbytes(n) for n in (10, 0, 70000, 3)]
    response = channel.stream_unary(CLIENT_STREAM)(iter(requests), timeout=CALL_TIMEOUT_S)
    expect(response == b"".join(requests), "client stream: concatenation changed")


def check_bidi(channel, rng):
    requests = [b"%d:" % i + rng.randbytes(rng.randrange(0, 2000)) for i in range(500)]
    requests[7] = b""
    responses = list(channel.stream_stream(BIDI)(iter(requests), timeout=CALL_TIMEOUT_S))
    expect(
        len(responses) == len(requests),
        "bidi: %d of %d messages" % (len(responses), len(requests)),
    )
    for i, (sent, received) in enumerate(zip(requests, responses)):
        expect(sent == received, "bidi: message %d changed or out of order" % i)


def check_error_status(channel, rng):
    details = rng.randbytes(80) + b"\x00"
    metadata = (
        ("x-status-code", "5"),
        ("x-status-message", "nothing here"),
        ("x-status-details-bin", details),
        ("x-trailer-why", "because"),
    )
    try:
        channel.unary_unary(UNARY)(b"m", metadata=metadata, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as error:
        expect(error.code() == grpc.StatusCode.NOT_FOUND, "status: code %s" % error.code())
        expect(error.details() == "nothing here", "status: message %r" % error.details())
        trailing = error.trailing_metadata()
        expect(
            values(trailing, "grpc-status-details-bin") == [details],
            "status: details %r" % (values(trailing, "grpc-status-details-bin"),),
        )
        expect(
            values(trailing, "x-trailer-why") == ["because"],
            "status: trailers %r" % (trailing,),
        )
    else:
        raise CheckFailed("status: the call succeeded")


def check_deadline(channel, rng):
    start = time.monotonic()
    try:
        channel.unary_unary(UNARY)(b"m", metadata=(("x-sleep-ms", "10000"),), timeout=0.5)
    except grpc.RpcError as error:
        expect(
            error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, "deadline: code %s" % error.code()
        )
        expect(time.monotonic() - start < 3, "deadline: took %.1f s" % (time.monotonic() - start))
    else:
        raise CheckFailed("deadline: the call succeeded")


CHECKS = (
    check_unary,
    check_metadata,
    check_server_stream,
    check_client_stream,
    check_bidi,
    check_error_status,
    check_deadline,
)


def run_checks(label, target, checks=CHECKS):
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    failures = 0
    with grpc.insecure_channel(target, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT_S)
        for check in checks:
            rng = random.Random(check.__name__)
            try:
                check(channel, rng)
                print("ok    %s %s" % (label, check.__name__))
            except (CheckFailed, grpc.RpcError) as error:
                failures += 1
                print("FAIL  %s %s: %s" % (label, check.__name__, error))
    return failures


def run_direct_and_through(upstream_target, poolside, listen_target, checks=CHECKS):
    """Every check against the upstream directly, then through poolside."""
    failures = run_checks("direct         ", upstream_target, checks)
    try:
        failures += run_checks("through poolside", listen_target, checks)
    except grpc.FutureTimeoutError:
        failures += 1
        print("FAIL  poolside did not serve on %s" % listen_target)
    expect(poolside.poll() is None, "poolside exited with %s" % poolside.poll())
    return failures


def report(failures, log):
    """Prints the verdict (and poolside's log on failure); the exit status."""
    if failures:
        log.seek(0)
        sys.stdout.write("---- poolside output ----\n")
        sys.stdout.write(log.read().decode(errors="replace")[-6000:])
    print("%s: %d failure(s)" % ("FAILED" if failures else "PASSED", failures))
    return 1 if failures else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poolside", required=True, help="the poolside binary")
    parser.add_argument("--upstream", required=True, help="the test_upstream binary")
    parser.add_argument("--forwarder", default="grpc", choices=["grpc", "frames"],
                        help="poolside's GRPC_FORWARDER")
    args = parser.parse_args()

    upstream = poolside = None
    log = tempfile.TemporaryFile()
    failures = 0
    try:
        upstream, upstream_port = start_upstream(args.upstream)
        poolside, listen_target = start_poolside(args.poolside, upstream_port, log,
                                                 args.forwarder)
        failures += run_direct_and_through("127.0.0.1:%d" % upstream_port, poolside,
                                           listen_target)
    except CheckFailed as error:
        failures += 1
        print("FAIL  %s" % error)
    finally:
        stop(poolside)
        stop(upstream)
    return report(failures, log)


if __name__ == "__main__":
    sys.exit(main())
