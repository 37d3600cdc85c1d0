"""A gRPC billing service and its client, on Python's grpcio (a gRPC stack no one
at Keyway wrote), for crates/keyway/tests/grpc.rs.

    billing.py server [CERT KEY]      serves on 127.0.0.1:0 (TLS with CERT and KEY when
                                      given), prints the port
    billing.py calls TARGET CA TOKEN  runs every kind of call, prints one JSON object
    billing.py follow TARGET CA TOKEN...
                                      a stream per token on one connection, until
                                      each ends: a line per message

CA is a PEM file for a TLS channel, or `-` for cleartext HTTP/2 (h2c). Messages are
raw bytes (no .proto needed): the methods are registered with identity serializers.
"""

import json
import sys
import time
from concurrent import futures

import grpc

INVOICES = "billing.v1.Invoices"
ADMIN = "billing.v1.Admin"


def serve(tls=None):
    def get(request, context):
        context.set_trailing_metadata((("x-served-by", "billing"),))
        return b"invoice " + request

    def list_(request, context):
        if request == b"forever":
            n = 0
            while context.is_active():
                n += 1
                yield b"invoice %d" % n
                time.sleep(0.1)
            return
        for i in range(int(request)):
            yield b"invoice %d" % (i + 1)

    def upload(requests, context):
        parts = sum(1 for _ in requests)
        return b"%d parts" % parts

    def chat(requests, context):
        for r in requests:
            yield b"echo " + r

    def delete(request, context):
        return b"deleted"

    ident = dict(request_deserializer=None, response_serializer=None)
    invoices = grpc.method_handlers_generic_handler(
        INVOICES,
        {
            "Get": grpc.unary_unary_rpc_method_handler(get, **ident),
            "List": grpc.unary_stream_rpc_method_handler(list_, **ident),
            "Upload": grpc.stream_unary_rpc_method_handler(upload, **ident),
            "Chat": grpc.stream_stream_rpc_method_handler(chat, **ident),
        },
    )
    admin = grpc.method_handlers_generic_handler(
        ADMIN, {"Delete": grpc.unary_unary_rpc_method_handler(delete, **ident)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((invoices, admin))
    if tls:
        with open(tls[0], "rb") as c, open(tls[1], "rb") as k:
            creds = grpc.ssl_server_credentials(((k.read(), c.read()),))
        port = server.add_secure_port("127.0.0.1:0", creds)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def channel(target, ca):
    if ca == "-":
        return grpc.insecure_channel(target)
    with open(ca, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    return grpc.secure_channel(target, creds)


def code_of(call):
    try:
        return call()
    except grpc.RpcError as e:
        return "error %s: %s" % (e.code().name, e.details())


def calls(target, ca, token):
    ch = channel(target, ca)
    auth = (("authorization", "Bearer " + token),)
    m = lambda kind, name: getattr(ch, kind)("/" + name)
    out = {}

    def unary():
        resp, call = m("unary_unary", INVOICES + "/Get").with_call(b"42", metadata=auth, timeout=10)
        return [resp.decode(), dict(call.trailing_metadata()).get("x-served-by")]

    out["unary"] = code_of(unary)
    out["server_stream"] = code_of(
        lambda: [r.decode() for r in m("unary_stream", INVOICES + "/List")(b"3", metadata=auth, timeout=10)]
    )
    out["client_stream"] = code_of(
        lambda: m("stream_unary", INVOICES + "/Upload")(iter([b"a", b"b", b"c"]), metadata=auth, timeout=10).decode()
    )
    out["bidi"] = code_of(
        lambda: [r.decode() for r in m("stream_stream", INVOICES + "/Chat")(iter([b"x", b"y"]), metadata=auth, timeout=10)]
    )
    out["outside_grant"] = code_of(
        lambda: m("unary_unary", ADMIN + "/Delete")(b"1", metadata=auth, timeout=10).decode()
    )
    out["no_token"] = code_of(lambda: m("unary_unary", INVOICES + "/Get")(b"1", timeout=10).decode())
    out["wrong_token"] = code_of(
        lambda: m("unary_unary", INVOICES + "/Get")(
            b"1", metadata=(("authorization", "Bearer kwat_wrong"),), timeout=10
        ).decode()
    )
    print(json.dumps(out), flush=True)


def follow(target, ca, *tokens):
    """One server stream per token, all on one channel (one HTTP/2 connection):
    `N invoice K` per message of the Nth, then `N ended CODE`."""
    import threading

    ch = channel(target, ca)
    lock = threading.Lock()

    def say(line):
        with lock:
            print(line, flush=True)

    def one(n, token):
        stream = ch.unary_stream("/" + INVOICES + "/List")(
            b"forever", metadata=(("authorization", "Bearer " + token),), timeout=60
        )
        try:
            for r in stream:
                say("%d %s" % (n, r.decode()))
            say("%d ended OK" % n)
        except grpc.RpcError as e:
            say("%d ended %s" % (n, e.code().name))

    threads = [threading.Thread(target=one, args=(n, t)) for n, t in enumerate(tokens)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "server":
        serve(sys.argv[2:4] or None)
    elif mode == "calls":
        calls(*sys.argv[2:5])
    elif mode == "follow":
        follow(*sys.argv[2:])
    else:
        sys.exit("usage: billing.py server | calls TARGET CA TOKEN | follow TARGET CA TOKEN...")
