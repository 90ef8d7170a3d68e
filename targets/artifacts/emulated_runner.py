"""Runs inside the emulated aarch64 python: load a Relax VM library, run `main`, save outputs and timings.

Usage: emulated_runner.py LIBRARY INPUTS.npz OUTPUTS.npz KEY[,KEY...] REPEATS
Inputs are the arrays of INPUTS.npz in KEY order; OUTPUTS.npz gets out0, out1, ... and latency_ms (one entry
per timed repeat). Only the standard library, numpy and tvm may be used here. On failure it prints one line
to stderr and exits 1.
"""

from __future__ import annotations

import sys
import time


def to_numpy(value, np) -> list:
    """A VM result (a tensor, or a tuple/Array of them, possibly nested) as a flat list of arrays."""
    if hasattr(value, "numpy"):
        return [value.numpy()]
    if isinstance(value, (int, float, bool)):
        return [np.asarray(value)]
    return [array for item in value for array in to_numpy(item, np)]


def run(library: str, inputs_path: str, outputs_path: str, order: str, repeats: int) -> None:
    """Load `library`, call main once for the outputs, then `repeats` more times for the timings."""
    import numpy as np
    import tvm
    from tvm.runtime.vm import VirtualMachine

    device = tvm.cpu()
    vm = VirtualMachine(tvm.runtime.load_module(library), device)
    make = getattr(tvm.runtime, "tensor", None) or tvm.nd.array
    with np.load(inputs_path, allow_pickle=False) as data:
        args = [make(np.asarray(data[key], order="C"), device) for key in order.split(",") if key]
    main = vm["main"]
    outputs = to_numpy(main(*args), np)
    latencies = []
    for _ in range(repeats):
        start = time.perf_counter()
        main(*args)
        latencies.append((time.perf_counter() - start) * 1e3)
    arrays = {f"out{i}": array for i, array in enumerate(outputs)}
    np.savez(outputs_path, latency_ms=np.asarray(latencies, dtype=np.float64), **arrays)


def main(argv: list[str]) -> int:
    """Entry point; returns the exit status."""
    if len(argv) != 6:
        print("usage: emulated_runner.py LIBRARY INPUTS.npz OUTPUTS.npz KEYS REPEATS", file=sys.stderr)
        return 2
    try:
        run(argv[1], argv[2], argv[3], argv[4], int(argv[5]))
    except Exception as exc:
        message = " ".join(str(exc).split()) or "no message"
        print(f"emulated_runner: {type(exc).__name__}: {message[-500:]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
