#!/usr/bin/env python3
"""poolside between a python3-grpcio client and a python3-grpcio upstream.

The upstream (in this process, raw bytes, no protobuf) ends calls with what a
grpc++ client hides or rebuilds: an OK status that carries a
grpc-status-details-bin trailer, an error with details, an error whose
message is not ASCII, and trailers-only answers. Every check runs against the
upstream directly and through poolside, and the app must see the same thing
both ways. poolside is always stopped. Exits non-zero on any failure.

    python_upstream_test.py --poolside build/poolside
"""

import argparse
import os
import sys
import tempfile
from concurrent import futures

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from python_client_test import (  # noqa: E402
    CALL_TIMEOUT_S,
    CheckFailed,
    expect,
    report,
    run_direct_and_through,
    start_poolside,
    stop,
    values,
)

DETAILS_KEY = "grpc-status-details-bin"
# Not a parsed google.rpc.Status on purpose: poolside must pass the bytes,
# not understand them.
OK_DETAILS = b"\x08\x00\x12\x04fine\x00\xff"
ERROR_DETAILS = b"\x08\x05\x12\x09not found\x00\x01"


def ok_with_details(request, context):
    context.set_trailing_metadata(((DETAILS_KEY, OK_DETAILS), ("x-after", "ok")))
    return request


def error_with_details(request, context):
    context.set_trailing_metadata(((DETAILS_KEY, ERROR_DETAILS),))
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def error_non_ascii_message(request, context):
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "d\u00e9j\u00e0 vu \u2713")


def stream_then_ok_with_details(request, context):
    context.set_trailing_metadata(((DETAILS_KEY, OK_DETAILS),))
    for _ in range(3):
        yield request


HANDLERS = {
    "/py.Upstream/OkWithDetails": grpc.unary_unary_rpc_method_handler(ok_with_details),
    "/py.Upstream/ErrorWithDetails": grpc.unary_unary_rpc_method_handler(error_with_details),
    "/py.Upstream/ErrorNonAscii": grpc.unary_unary_rpc_method_handler(error_non_ascii_message),
    "/py.Upstream/StreamOkWithDetails": grpc.unary_stream_rpc_method_handler(
        stream_then_ok_with_details
    ),
}


class RawHandlers(grpc.GenericRpcHandler):
    def service(self, handler_call_details):
        return HANDLERS.get(handler_call_details.method)


def check_ok_with_details(channel, _rng):
    response, call = channel.unary_unary("/py.Upstream/OkWithDetails").with_call(
        b"payload", timeout=CALL_TIMEOUT_S
    )
    expect(response == b"payload", "ok-with-details: response changed")
    expect(call.code() == grpc.StatusCode.OK, "ok-with-details: code %s" % call.code())
    trailing = call.trailing_metadata()
    expect(values(trailing, DETAILS_KEY) == [OK_DETAILS], "OK details lost: %r" % (trailing,))
    expect(values(trailing, "x-after") == ["ok"], "trailer lost: %r" % (trailing,))


def check_error_with_details(channel, _rng):
    try:
        channel.unary_unary("/py.Upstream/ErrorWithDetails")(b"x", timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as error:
        expect(error.code() == grpc.StatusCode.NOT_FOUND, "code %s" % error.code())
        expect(error.details() == "no such thing", "message %r" % error.details())
        found = values(error.trailing_metadata(), DETAILS_KEY)
        expect(found == [ERROR_DETAILS], "error details: %r" % (found,))
        return
    raise CheckFailed("error-with-details: the call succeeded")


def check_error_non_ascii(channel, _rng):
    try:
        channel.unary_unary("/py.Upstream/ErrorNonAscii")(b"x", timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as error:
        expect(error.code() == grpc.StatusCode.FAILED_PRECONDITION, "code %s" % error.code())
        expect(error.details() == "d\u00e9j\u00e0 vu \u2713", "message %r" % error.details())
        return
    raise CheckFailed("non-ascii message: the call succeeded")


def check_stream_ok_with_details(channel, _rng):
    call = channel.unary_stream("/py.Upstream/StreamOkWithDetails")(b"s", timeout=CALL_TIMEOUT_S)
    responses = list(call)
    expect(responses == [b"s"] * 3, "stream: %r" % (responses,))
    found = values(call.trailing_metadata(), DETAILS_KEY)
    expect(found == [OK_DETAILS], "stream OK details lost: %r" % (found,))


CHECKS = [check_ok_with_details, check_error_with_details, check_error_non_ascii,
          check_stream_ok_with_details]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poolside", required=True, help="the poolside binary")
    parser.add_argument("--forwarder", default="grpc", choices=["grpc", "frames"],
                        help="poolside's GRPC_FORWARDER")
    args = parser.parse_args()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=(RawHandlers(),))
    upstream_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    poolside = None
    log = tempfile.TemporaryFile()
    failures = 0
    try:
        poolside, listen_target = start_poolside(args.poolside, upstream_port, log,
                                                 args.forwarder)
        failures += run_direct_and_through("127.0.0.1:%d" % upstream_port, poolside,
                                           listen_target, CHECKS)
    except CheckFailed as error:
        failures += 1
        print("FAIL  %s" % error)
    finally:
        stop(poolside)
        server.stop(grace=None)
    return report(failures, log)


if __name__ == "__main__":
    sys.exit(main())
