"""Which nodes of a prepared model TVM can compile, decided before planning, so a plan can run the rest
on onnxruntime and say so.

A node falls back when TVM's ONNX frontend has no converter for its op, when the frontend refuses to
import it on its own (for example a shape or axes that only arrives at run time), or when its op and
attributes match a conformance case where TVM's compiled code was measured to compute wrong numbers
(`data/tvm_known_wrong.json`, written by `benchmarks/conformance.py --write-known-wrong`, never by hand).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from functools import cache
from pathlib import Path
from typing import Any

import onnx

from nndeploy.cutting import value_infos
from nndeploy.targets.frontend.expansion import expand_functions, expandable
from nndeploy.targets.frontend.opset_upgrade import upgrade_opset
from nndeploy.types import FallbackNode

KNOWN_WRONG_FILE = Path(__file__).parent / "data" / "tvm_known_wrong.json"


def compiler_problems(model: onnx.ModelProto, use_known_wrong: bool = True) -> dict[str, FallbackNode]:
    """The nodes of `model` (checked and prepared: static shapes, constants folded) that TVM cannot
    compile or computes wrongly, by node name, each with the reason."""
    from nndeploy.targets.frontend.ops import tvm_onnx_ops

    supported = tvm_onnx_ops()
    known_wrong = load_known_wrong() if use_known_wrong else {}
    types = value_infos(model)
    initializers = {init.name: init for init in model.graph.initializer}
    probed: dict[str, str | None] = {}
    problems = {}
    for node in model.graph.node:
        reason = non_tensor_reason(node, types)
        if reason is not None:
            problems[node.name] = FallbackNode(node.name, node.op_type, reason)
            continue
        if node.domain not in ("", "ai.onnx") or node.op_type not in supported:
            domain = f"{node.domain}." if node.domain not in ("", "ai.onnx") else ""
            reason = f"TVM's ONNX frontend has no converter for {domain}{node.op_type}"
            if not domain and expandable(node, model):
                key = _probe_key(node_signature(node, types, initializers), node, initializers)
                if key not in probed:
                    probed[key] = import_problem(node, model, types, initializers, supported)
                if probed[key] is None:
                    reason = None  # its function body (the standard's definition) imports
                else:
                    reason += f", and its function body does not import ({probed[key]})"
        else:
            signature = node_signature(node, types, initializers)
            if signature in known_wrong:
                reason = f"TVM's code for it was measured wrong (conformance case {known_wrong[signature]})"
            else:
                key = _probe_key(signature, node, initializers)
                if key not in probed:
                    probed[key] = import_problem(node, model, types, initializers)
                reason = probed[key]
        reason = reason or dynamic_shape_reason(node, types)
        if reason is not None:
            problems[node.name] = FallbackNode(node.name, node.op_type, reason)
    return problems


def non_tensor_reason(node: onnx.NodeProto, types: dict[str, onnx.ValueInfoProto]) -> str | None:
    """Why a node that reads or writes a sequence, optional or map stays on onnxruntime: TVM parts and
    onnxruntime regions hand each other tensors only."""
    for name in (*node.input, *node.output):
        kind = types[name].type.WhichOneof("value") if name in types else "tensor_type"
        if kind not in ("tensor_type", None):
            what = kind.removesuffix("_type")
            return f"it reads or writes '{name}', a {what}, and TVM parts exchange tensors only"
    return None


def dynamic_shape_reason(node: onnx.NodeProto, types: dict[str, onnx.ValueInfoProto]) -> str | None:
    """Why TVM cannot build `node` when one of its tensors has a shape known only at run time."""
    if node.op_type == "Constant":
        return None
    unknown = [n for n in (*node.input, *node.output) if n and n in types and not static_shape(types[n])]
    if not unknown:
        return None
    return f"the shape of '{unknown[0]}' is known only at run time (TVM builds static shapes)"


def static_shape(value_info: onnx.ValueInfoProto) -> bool:
    """Whether a tensor's shape is fully known before running (every dim a number)."""
    kind = value_info.type.WhichOneof("value")
    if kind != "tensor_type":
        return kind is None
    tensor = value_info.type.tensor_type
    return tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim)


def node_signature(
    node: onnx.NodeProto, types: dict[str, onnx.ValueInfoProto], initializers: dict[str, onnx.TensorProto]
) -> str:
    """What identifies a node for the known-wrong list: op, attributes, each input's element type, rank
    and whether it is a constant, and how many outputs are used (TVM gets some optional outputs wrong)."""
    attributes = []
    for attribute in sorted(node.attribute, key=lambda a: a.name):
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, onnx.GraphProto | onnx.TensorProto) or (
            isinstance(value, list) and value and not isinstance(value[0], int | float | bytes | str)
        ):
            value = "<graph or tensor>"
        elif isinstance(value, bytes):
            value = value.decode(errors="replace")
        elif isinstance(value, list):
            value = [v.decode(errors="replace") if isinstance(v, bytes) else v for v in value]
        attributes.append(f"{attribute.name}={value}")
    inputs = []
    for name in node.input:
        if not name:
            inputs.append("-")
        elif name in initializers:
            tensor = initializers[name]
            inputs.append(f"{onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)}[{len(tensor.dims)}]c")
        elif name in types and types[name].type.HasField("tensor_type"):
            tensor_type = types[name].type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
            inputs.append(f"{dtype}[{len(tensor_type.shape.dim)}]")
        else:
            inputs.append("?")
    outputs = len([name for name in node.output if name])
    op = f"{node.domain or 'ai.onnx'}.{node.op_type}"
    return f"{op}({', '.join(inputs)}; {', '.join(attributes)}) -> {outputs}"


@cache
def load_known_wrong() -> dict[str, str]:
    """signature -> a conformance case showing TVM's compiled code for it is wrong."""
    if not KNOWN_WRONG_FILE.is_file():
        return {}
    data = json.loads(KNOWN_WRONG_FILE.read_text())
    return {entry["signature"]: entry["case"] for entry in data["entries"]}


def write_known_wrong(
    entries: dict[str, str], provenance: dict[str, Any], path: Path = KNOWN_WRONG_FILE
) -> None:
    """Write the known-wrong list (signature -> case) with where it came from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"signature": s, "case": c} for s, c in sorted(entries.items())]
    path.write_text(json.dumps({"generated_by": provenance, "entries": rows}, indent=1) + "\n")
    load_known_wrong.cache_clear()


def _probe_key(signature: str, node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> str:
    """The signature plus the shapes and constant values the import may depend on."""
    digest = hashlib.sha256(signature.encode())
    for name in node.input:
        if name in initializers:
            digest.update(initializers[name].SerializeToString())
        digest.update(name.encode())
    return digest.hexdigest()


def import_problem(
    node: onnx.NodeProto,
    model: onnx.ModelProto,
    types: dict[str, onnx.ValueInfoProto],
    initializers: dict[str, onnx.TensorProto],
    expand_unless: frozenset[str] | None = None,
) -> str | None:
    """None if TVM's frontend imports the node on its own with its static shapes, else its first line;
    with `expand_unless` (the ops TVM imports) the node is first expanded as the build will expand it."""
    from nndeploy.errors import first_line
    from nndeploy.targets.frontend.converters import from_onnx

    inputs = [types[n] for n in dict.fromkeys(node.input) if n and n not in initializers and n in types]
    outputs = [types[n] for n in node.output if n and n in types]
    if len(outputs) != len([n for n in node.output if n]):
        return None  # no type for an output: leave the decision to the build
    single = onnx.helper.make_model(
        onnx.helper.make_graph(
            [node],
            "probe",
            inputs,
            outputs,
            [initializers[n] for n in dict.fromkeys(node.input) if n in initializers],
        ),
        opset_imports=model.opset_import,
        ir_version=model.ir_version,
    )
    single = upgrade_opset(single)  # as the build imports it
    if expand_unless is not None:
        single = expand_functions(single, expand_unless)
        missing = sorted({n.op_type for n in single.graph.node if n.op_type not in expand_unless})
        if missing:
            return f"it expands to {', '.join(missing)}, which TVM cannot import either"
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in inputs}
    dtypes = {
        vi.name: onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name for vi in inputs
    }
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the frontend prints each failure too
            from_onnx(single, shapes, dtypes)
    except Exception as exc:  # the frontend raises many types; its first line says why
        return f"TVM cannot import it: {first_line(exc)}"
    return None
