"""The cost model: how long each op takes on each device, and how long a tensor takes over a link.

The analytic model is a roofline (FLOPs against peak compute, bytes against memory bandwidth) plus the
device's per-op launch overhead. A tensor sent between stages costs the link's latency and its bytes over
the link's bandwidth, plus what the data plane itself spends on a hop (`HopCost`: a fixed time per
message and a time per MiB, measured by `nndeploy profile`), so a split that saves less compute than its
hop costs is not made. Anything with the same two methods (for example a model calibrated by
measurement) can replace it; the search only ever sees the arrays it produces.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from nndeploy.types import Device, Graph, HopCost, Link


class CostModel(Protocol):
    """What the planner needs to know about time."""

    def node_ms(self, graph: Graph, device: Device) -> np.ndarray:
        """Predicted milliseconds of every node of `graph` on `device` (inf where it cannot run)."""
        ...

    def transfer_ms(self, nbytes: float, link: Link | None) -> float:
        """Predicted milliseconds to move `nbytes` from one process to the next over `link` (None: two
        processes on the same device, e.g. the endpoint and its first stage)."""
        ...


# Measured by `nndeploy profile` (runtime.hop) on a 2-core x86 server: 0.25-0.32 ms per message and
# 0.64-0.71 ms per MiB over plain TCP; rounded up. A calibration.json with a measured hop replaces it.
DEFAULT_HOP = HopCost(fixed_ms=0.3, ms_per_mib=0.7)


class RooflineCostModel:
    """max(FLOPs / peak, bytes / bandwidth) + launch overhead per op, from the device's profile; transfers
    over the link plus the data plane's `hop` cost."""

    def __init__(self, hop: HopCost = DEFAULT_HOP) -> None:
        self.hop = hop

    def node_ms(self, graph: Graph, device: Device) -> np.ndarray:
        """Predicted milliseconds of every node of `graph` on `device` (inf where it cannot run)."""
        times = np.empty(len(graph.nodes))
        bandwidth = device.mem_bw_gbytes_s * 1e9
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
        """The hop's own cost, plus the link's latency and size over bandwidth between devices."""
        return self.hop.ms(nbytes) + (0.0 if link is None else link.transfer_ms(int(nbytes)))


def supports(device: Device, op_type: str, dtype: str) -> bool:
    """Whether `device` can run an `op_type` node computing in `dtype`."""
    return (device.ops is None or op_type in device.ops) and device.supports_dtype(dtype)
