"""Runs inside the emulated aarch64 python: one stage's gRPC worker (runtime.worker, the same code as on
the host) for the life of the stage, computing on the TVM VM in this process.

Usage: emulated_worker.py CONFIG.json
CONFIG: {"library": path, "inputs": [main's parameters, by tensor name], "outputs": [main's results, by
tensor name], "spec": StageSpec's fields, "port": int, "side_port": int, "host": str, "tls": {"cert", "key",
"ca"} paths and "server_name", or null}. Prints "listening on PORT" once it serves; SIGTERM or SIGINT stops
it, and so does the end of the process that started it. On failure it prints one line to stderr and exits 1.
Only the standard library, numpy, tvm, grpc, protobuf (cryptography for TLS) and nndeploy's runtime package
(put on PYTHONPATH by the host) may be used here.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path


def serve(config: dict) -> None:
    """Load the library and serve the stage until a signal."""
    import numpy as np
    import tvm
    from emulated_runner import to_numpy  # beside this script
    from tvm.runtime.vm import VirtualMachine

    from nndeploy.runtime.tls import TlsFiles
    from nndeploy.runtime.worker import StageSpec, serve_stage

    device = tvm.cpu()
    main = VirtualMachine(tvm.runtime.load_module(config["library"]), device)["main"]
    make = getattr(tvm.runtime, "tensor", None) or tvm.nd.array
    inputs, outputs = config["inputs"], config["outputs"]

    def execute(tensors: dict) -> dict:
        args = [make(np.ascontiguousarray(tensors[name]), device) for name in inputs]
        return dict(zip(outputs, to_numpy(main(*args), np), strict=True))

    fields = config["spec"]
    spec = StageSpec(**{**fields, "inputs": tuple(fields["inputs"]), "outputs": tuple(fields["outputs"])})
    paths = config.get("tls")
    tls = (
        TlsFiles(*(Path(paths[k]).read_bytes() for k in ("cert", "key", "ca")), paths.get("server_name", ""))
        if paths
        else None
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        watcher = asyncio.create_task(_stop_when_orphaned(stop))
        await serve_stage(
            spec,
            execute,
            config["port"],
            host=config["host"],
            ready=lambda port: print(f"listening on {port}", flush=True),
            stop=stop,
            tls=tls,
            side_port=config.get("side_port", 0),
        )
        watcher.cancel()

    asyncio.run(run())


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    """Set `stop` once the process that started this one is gone (killed without stopping it first)."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    stop.set()


def main(argv: list[str]) -> int:
    """Entry point; returns the exit status."""
    if len(argv) != 2:
        print("usage: emulated_worker.py CONFIG.json", file=sys.stderr)
        return 2
    try:
        serve(json.loads(Path(argv[1]).read_text()))
    except Exception as exc:
        message = " ".join(str(exc).split()) or "no message"
        print(f"emulated_worker: {type(exc).__name__}: {message[-500:]}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
