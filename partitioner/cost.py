"""The cost model: how long each op takes on each device, and how long a tensor takes over a link.

The analytic model is a roofline (FLOPs against peak compute, bytes against memory bandwidth) plus the
device's per-op launch overhead. Anything with the same two methods (for example a model calibrated by
measurement) can replace it; the search only ever sees the arrays it produces.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from nndeploy.types import Device, Graph, Link


class CostModel(Protocol):
    """What the planner needs to know about time."""

    def node_ms(self, graph: Graph, device: Device) -> np.ndarray:
        """Predicted milliseconds of every node of `graph` on `device` (inf where it cannot run)."""
        ...

    def transfer_ms(self, nbytes: float, link: Link | None) -> float:
        """Predicted milliseconds to move `nbytes` over `link` (None: same device, free)."""
        ...


class RooflineCostModel:
    """max(FLOPs / peak, bytes / bandwidth) + launch overhead per op, from the device's profile."""

    def node_ms(self, graph: Graph, device: Device) -> np.ndarray:
        """Predicted milliseconds of every node of `graph` on `device` (inf where it cannot run)."""
        times = np.empty(len(graph.nodes))
        bandwidth = device.mem_bw_gbps * 1e9
        overhead_ms = device.launch_overhead_us / 1e3
        for index, node in enumerate(graph.nodes):
            if not supports(device, node.op_type, node.dtype):
                times[index] = np.inf
                continue
            compute_s = node.flops / (device.peak_gflops_for(node.dtype) * 1e9)
            memory_s = (node.bytes_read + node.bytes_written) / bandwidth
            times[index] = max(compute_s, memory_s) * 1e3 + overhead_ms
        return times

    def transfer_ms(self, nbytes: float, link: Link | None) -> float:
        """Latency plus size over bandwidth; zero on the same device."""
        return 0.0 if link is None else link.transfer_ms(int(nbytes))


def supports(device: Device, op_type: str, dtype: str) -> bool:
    """Whether `device` can run an `op_type` node computing in `dtype`."""
    return (device.ops is None or op_type in device.ops) and device.supports_dtype(dtype)
