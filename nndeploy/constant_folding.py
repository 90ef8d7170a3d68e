"""Constant folding for ONNX models: evaluates nodes whose inputs are all known (initializers or static
shapes) and replaces them by initializers, plus the read-only dataflow helpers (tensor types, what a node
reads) it shares with nndeploy.model_prep.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

NONDETERMINISTIC_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)
MAX_FOLD_ROUNDS = 6  # fold passes (each after fresh shape inference) before preparation stops trying

Dims = list[int | str | None]  # a shape as read from a proto: int (static), str (symbolic), None (unknown)


def value_dims(vi: onnx.ValueInfoProto) -> Dims | None:
    """Shape of a tensor value info (None when the rank is unknown or it is not a tensor)."""
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The model's real inputs: graph inputs that are not initializers (old IR lists weights as inputs)."""
    inits = {t.name for t in model.graph.initializer} | {
        t.values.name for t in model.graph.sparse_initializer
    }
    return [vi for vi in model.graph.input if vi.name not in inits]


def _subgraphs(node: onnx.NodeProto) -> Iterable[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def outer_refs(node: onnx.NodeProto) -> list[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the enclosing scope, in first-use order."""
    refs: dict[str, None] = {}

    def visit(graph: onnx.GraphProto, bound: set[str]) -> None:
        bound = bound | {v.name for v in graph.input} | {t.name for t in graph.initializer}
        for n in graph.node:
            for name in n.input:
                if name and name not in bound:
                    refs.setdefault(name)
            for g in _subgraphs(n):
                visit(g, bound)
            bound |= set(n.output)

    for g in _subgraphs(node):
        visit(g, set())
    return list(refs)


def node_reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor a node reads: its non-empty inputs then its subgraphs' outer-scope references."""
    names = [n for n in node.input if n]
    return names + [n for n in outer_refs(node) if n not in names]


def tensor_types(model: onnx.ModelProto) -> dict[str, tuple[int, Dims | None]]:
    """(ONNX elem type, shape) of every tensor the model declares: inputs, value_info, outputs and
    initializers (which win)."""
    types: dict[str, tuple[int, Dims | None]] = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        if vi.type.HasField("tensor_type"):
            types[vi.name] = (vi.type.tensor_type.elem_type, value_dims(vi))
    for init in model.graph.initializer:
        types[init.name] = (init.data_type, list(init.dims))
    return types


def _static(dims: Dims | None) -> tuple[int, ...] | None:
    if dims is None or not all(isinstance(d, int) and d >= 0 for d in dims):
        return None
    return tuple(int(d) for d in dims)  # type: ignore[arg-type]


def _evaluate(
    node: onnx.NodeProto, values: dict[str, np.ndarray], types: dict, opsets: dict[str, int]
) -> list[np.ndarray] | None:
    """Outputs of a constant node, or None when it cannot (or must not) be folded."""
    if node.op_type in ("Shape", "Size"):
        shape = _static(types.get(node.input[0], (0, None))[1])
        if shape is None:
            return None
        if node.op_type == "Size":
            return [np.array(math.prod(shape), dtype=np.int64)]
        attrs = {a.name: a.i for a in node.attribute}
        start, end = attrs.get("start", 0), attrs.get("end", len(shape))
        return [np.array(shape[start:end], dtype=np.int64)]
    if not all(i in values for i in node.input if i):
        return None
    from onnx.reference import ReferenceEvaluator

    try:
        node, feeds, opsets = _modernize(node, {i: values[i] for i in node.input if i}, opsets)
        outs = ReferenceEvaluator(node, opsets=opsets).run(None, feeds)
    except Exception:
        return None
    arrays = [np.asarray(o) for o in outs]
    return None if any(a.dtype.kind == "O" for a in arrays) else arrays


def _modernize(
    node: onnx.NodeProto, feeds: dict[str, np.ndarray], opsets: dict[str, int]
) -> tuple[onnx.NodeProto, dict[str, np.ndarray], dict[str, int]]:
    """Rewrite old attribute forms the reference evaluator mishandles into their newer input forms."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    x = feeds.get(node.input[0]) if node.input else None
    extra: dict[str, np.ndarray] = {}
    version = None
    if node.op_type == "Unsqueeze" and "axes" in attrs:
        extra, version = {"axes": np.array(attrs.pop("axes"), dtype=np.int64)}, 13
    elif node.op_type == "Clip" and ("min" in attrs or "max" in attrs) and x is not None:
        lo, hi = attrs.pop("min", -np.inf), attrs.pop("max", np.inf)
        extra, version = {"min": np.array(lo, x.dtype), "max": np.array(hi, x.dtype)}, 13
    elif node.op_type == "TopK" and "k" in attrs:
        extra, version = {"k": np.array([attrs.pop("k")], dtype=np.int64)}, 11
    elif node.op_type == "Pad" and ("pads" in attrs or "paddings" in attrs) and x is not None:
        pads = attrs.pop("pads", None) or attrs.pop("paddings")
        attrs.pop("paddings", None)
        value = np.array(attrs.pop("value", 0.0), dtype=x.dtype)
        extra, version = {"pads": np.array(pads, dtype=np.int64), "constant_value": value}, 11
    elif node.op_type == "Upsample" and "scales" in attrs:
        extra, version = {"scales": np.array(attrs.pop("scales"), dtype=np.float32)}, 9
    if version is None:
        return node, feeds, opsets
    names = {k: f"__nndeploy_{k}" for k in extra}
    new = onnx.helper.make_node(node.op_type, [node.input[0], *names.values()], list(node.output), **attrs)
    feeds = {node.input[0]: feeds[node.input[0]], **{names[k]: v for k, v in extra.items()}}
    return new, feeds, {**opsets, "": version}


def fold_constants(model: onnx.ModelProto) -> bool:
    """Replace constant nodes by initializers (one pass in topological order); True if any was folded."""
    graph = model.graph
    opsets = {o.domain or "": o.version for o in model.opset_import}
    opsets.setdefault("", 1)
    types = tensor_types(model)
    graph_outputs = {o.name for o in graph.output}
    inits = {t.name: t for t in graph.initializer}
    values: dict[str, np.ndarray] = {}
    kept = []
    for node in graph.node:
        outs = None
        if _may_fold(node, inits, graph_outputs):
            for i in node.input:  # decode inputs lazily, only for nodes that may fold
                if i and i not in values and i in inits:
                    values[i] = numpy_helper.to_array(inits[i])
            outs = _evaluate(node, values, types, opsets)
        if outs is None or len(outs) < len([o for o in node.output if o]):
            kept.append(node)
            continue
        for out_name, arr in zip(node.output, outs, strict=False):
            if out_name:
                elem = types.get(out_name, (0, None))[0]
                if elem:
                    arr = arr.astype(onnx.helper.tensor_dtype_to_np_dtype(elem), copy=False)
                inits[out_name] = _add_initializer(graph, out_name, arr)
                if arr.size <= 1 << 16:
                    values[out_name] = arr
    if len(kept) == len(graph.node):
        return False
    graph.ClearField("node")
    graph.node.extend(kept)
    return True


def _may_fold(node: onnx.NodeProto, inits: Mapping[str, object], graph_outputs: set[str]) -> bool:
    return (
        node.domain in ("", "ai.onnx")
        and node.op_type not in NONDETERMINISTIC_OPS
        and not any(True for _ in _subgraphs(node))
        and not (set(node.output) & graph_outputs)
        and (node.op_type in ("Shape", "Size") or all(i in inits for i in node.input if i))
    )


def _add_initializer(graph: onnx.GraphProto, name: str, arr: np.ndarray) -> onnx.TensorProto:
    """Append `arr` as an initializer without an intermediate TensorProto copy (weights can be large)."""
    tensor = graph.initializer.add()
    if arr.dtype.kind in "biuf" and arr.dtype.byteorder in "=|<" and np.little_endian:
        tensor.name = name
        tensor.data_type = onnx.helper.np_dtype_to_tensor_dtype(arr.dtype)
        tensor.dims.extend(arr.shape)
        tensor.raw_data = np.ascontiguousarray(arr).tobytes()
    else:
        tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr), name))
    return tensor


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    """Delete initializers that no node (nor subgraph) reads and that are not graph outputs."""
    graph = model.graph
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node_reads(node))
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name not in used:
            del graph.initializer[i]
