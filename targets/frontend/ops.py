"""Which ONNX ops each target can compile, read from TVM itself (its ONNX frontend's converter table)
rather than from a hand-kept list, so plans know at plan time what the compiler cannot import."""

from __future__ import annotations

import dataclasses
from functools import cache

from nndeploy.types import Cluster, Device


@cache
def tvm_onnx_ops() -> frozenset[str]:
    """ONNX op types TVM's Relax ONNX frontend has a converter for, plus those the project converts
    itself (targets/frontend/converters.py); imports TVM on first call."""
    from tvm.relax.frontend.onnx import onnx_frontend

    from nndeploy.targets.frontend.converters import own_converters

    # If is converted by the importer itself, outside its converter table.
    return frozenset(onnx_frontend._get_convert_map()) | frozenset(own_converters()) | {"If"}


def restrict_to_compiler(cluster: Cluster) -> Cluster:
    """The cluster with every device's op set narrowed to what TVM can import for it."""
    supported = tvm_onnx_ops()

    def narrowed(device: Device) -> Device:
        ops = supported if device.ops is None else device.ops & supported
        return dataclasses.replace(device, ops=frozenset(ops))

    return dataclasses.replace(cluster, devices=tuple(narrowed(d) for d in cluster.devices))
