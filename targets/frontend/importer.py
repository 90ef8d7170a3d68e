"""ONNX -> TVM Relax: a stage model brought to the opset TVM's frontend is written for, its functions
expanded, rewritten where TVM's converters need it, and imported; a failure names the node TVM chokes on."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import onnx

from nndeploy.errors import BuildError, first_line
from nndeploy.targets.frontend.expansion import expand_functions
from nndeploy.targets.frontend.opset_upgrade import upgrade_opset
from nndeploy.targets.frontend.rewrites import fold_batch_norms, sums_to_adds
from nndeploy.types import Device


def import_onnx(model: onnx.ModelProto, device: Device) -> Any:
    """TVM Relax module of a stage model, or a BuildError naming the node and op TVM cannot import."""
    from nndeploy.targets.frontend.converters import from_onnx
    from nndeploy.targets.frontend.ops import tvm_onnx_ops

    supported = tvm_onnx_ops()
    model = expand_functions(upgrade_opset(model), supported)
    for node in model.graph.node:
        if node.op_type not in supported:
            raise BuildError(
                f"device '{device.name}': node '{node.name}' (op {node.op_type}) cannot be imported by TVM's "
                "ONNX frontend; use --fallback onnxruntime or place it on another device"
            )
    model = _c_identifier_inputs(sums_to_adds(fold_batch_norms(model)))
    shapes, dtypes = {}, {}
    inits = {init.name for init in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tensor = vi.type.tensor_type
        shapes[vi.name] = [d.dim_value for d in tensor.shape.dim]
        dtypes[vi.name] = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the frontend prints each failure too
            return from_onnx(model, shapes, dtypes)
    except Exception as exc:  # the frontend raises many types; find the node it chokes on
        node = _failing_node(model)
        where = f"node '{node.name}' (op {node.op_type})" if node is not None else "the stage"
        raise BuildError(f"device '{device.name}': TVM cannot import {where}: {first_line(exc)}") from None


def _c_identifier_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose graph inputs have C-identifier names: TVM puts input names into generated CUDA kernel
    signatures (an input named 'gpu_0/data_0' breaks nvcc). The VM takes inputs by position, so the
    artifact's interface is unchanged."""
    import re

    valid = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
    inits = {init.name for init in model.graph.initializer}
    taken = {vi.name for vi in model.graph.input}
    renames = {}
    for index, vi in enumerate(model.graph.input):
        if vi.name in inits or valid.match(vi.name):
            continue
        candidate = re.sub(r"\W", "_", vi.name).lstrip("0123456789") or f"input_{index}"
        while candidate in taken:
            candidate = f"{candidate}_{index}"
        taken.add(candidate)
        renames[vi.name] = candidate
    if not renames:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for vi in copy.graph.input:
        vi.name = renames.get(vi.name, vi.name)
    for node in copy.graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
    for vi in copy.graph.output:  # an input passed straight through as an output
        vi.name = renames.get(vi.name, vi.name)
    return copy


def _failing_node(model: onnx.ModelProto) -> onnx.NodeProto | None:
    """The first node that TVM fails to import on its own (one node per op type is tried)."""
    from nndeploy.cutting import value_infos
    from nndeploy.targets.frontend.coverage import import_problem

    types = value_infos(model)
    initializers = {init.name: init for init in model.graph.initializer}
    tried: set[str] = set()
    for node in model.graph.node:
        if node.op_type in tried:
            continue
        tried.add(node.op_type)
        if import_problem(node, model, types, initializers) is not None:
            return node
    return None
