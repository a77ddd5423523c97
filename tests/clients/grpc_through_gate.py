"""gRPC peers for the gate's tests, with `grpcio` on both ends (raw bytes, no generated code).

    grpc_through_gate.py server
        Serves the gRPC health service (SERVING at first), `lameduck.Test/Unary` (answers the request reversed, with trailing metadata
        `x-lameduck: kept`) and `lameduck.Test/Stream` (the request is a count N: N messages,
        one every 50 ms) on 127.0.0.1; prints its port.

    grpc_through_gate.py health HOST:PORT serving|not_serving
        Sets the server's health (grpc.health.v1, the whole server) through SetHealth.

    grpc_through_gate.py client HOST:PORT
        A unary call and a short server-streaming call (both must finish untouched, trailers
        included); prints `ready`; then a long server-streaming call read until it ends; prints
        one JSON line with what it saw, including the long call's status code.
"""

import json
import sys
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

UNARY = "/lameduck.Test/Unary"
SET_HEALTH = "/lameduck.Test/SetHealth"
HEALTH = health.HealthServicer()
STREAM = "/lameduck.Test/Stream"


def unary(request, context):
    context.set_trailing_metadata((("x-lameduck", "kept"),))
    return request[::-1]


def stream(request, context):
    for i in range(int(request.decode())):
        if not context.is_active():
            return
        yield f"message {i}".encode()
        time.sleep(0.05)


def set_health(request, context):
    status = health_pb2.HealthCheckResponse.SERVING if request == b"serving" else health_pb2.HealthCheckResponse.NOT_SERVING
    HEALTH.set("", status)
    return b"ok"


def server():
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "SetHealth": grpc.unary_unary_rpc_method_handler(set_health),
    }
    HEALTH.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(HEALTH, s)
    s.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("lameduck.Test", handlers),))
    port = s.add_insecure_port("127.0.0.1:0")
    s.start()
    print(port, flush=True)
    s.wait_for_termination()


def client(target):
    out = {}
    with grpc.insecure_channel(target) as ch:
        call_unary = ch.unary_unary(UNARY)
        response, call = call_unary.with_call(b"lameduck", timeout=10)
        out["unary"] = response.decode()
        out["unary_code"] = call.code().name
        out["unary_trailer"] = dict(call.trailing_metadata() or ()).get("x-lameduck")
        short = ch.unary_stream(STREAM)(b"5", timeout=10)
        out["short"] = len(list(short))
        out["short_code"] = short.code().name
        print("ready", flush=True)
        long = ch.unary_stream(STREAM)(b"100000", timeout=60)
        received = 0
        try:
            for _ in long:
                received += 1
            out["long_code"] = long.code().name
        except grpc.RpcError as e:
            out["long_code"] = e.code().name
            out["long_details"] = e.details()
        out["long_received"] = received
    print(json.dumps(out), flush=True)


def set_health_of(target, status):
    with grpc.insecure_channel(target) as ch:
        print(ch.unary_unary(SET_HEALTH)(status.encode(), timeout=10).decode(), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server()
    elif sys.argv[1] == "health":
        set_health_of(sys.argv[2], sys.argv[3])
    else:
        client(sys.argv[2])
