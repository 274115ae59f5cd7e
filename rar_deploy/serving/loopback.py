"""Ray's one listening socket that no setting moves to loopback: each Serve replica's gRPC server for calls
between deployments, which Ray Serve 2.60 binds to `[::]:0` unconditionally. rar-serve names
`bind_replica_grpc_to_loopback` as the worker_process_setup_hook of the single-machine Ray it starts, so that
nothing it opens is reachable from the network (docs/RELIABILITY.md, "Nothing exposed"). A Ray whose replica
module no longer has this function is left alone; the loopback test of the serving suite then fails."""


def bind_replica_grpc_to_loopback() -> None:
    try:
        from ray.serve._private import replica
    except ImportError:
        return
    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "loopback", False):
        return

    def add_port(server, address: str):
        if address.startswith("[::]:"):
            address = "127.0.0.1:" + address.removeprefix("[::]:")
        return original(server, address)

    add_port.loopback = True
    replica.add_port_to_grpc_server = add_port
