"""Runs inside the emulated python: TVM's RPC server, in this process.

Usage: emulated_rpc_server.py HOST PORT
`python -m tvm.exec.rpc_server` starts the server in a new python process (exec of an aarch64 binary, which
user-mode qemu without binfmt registration cannot do); here the same server state runs in this one, and
each session in a forked child as usual. Prints "listening on PORT" once it accepts connections.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Serve until killed."""
    from tvm.rpc.server import PopenRPCServerState

    host, port = sys.argv[1], int(sys.argv[2])
    state = PopenRPCServerState(host, port, port + 1, silent=True)
    print(f"listening on {state.port}", flush=True)
    state.thread.join()


if __name__ == "__main__":
    main()
