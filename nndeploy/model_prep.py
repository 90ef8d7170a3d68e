"""Loading and preparing ONNX models: ModelProto -> ModelProto passes that bind input shapes, sort nodes,
infer static shapes, fold constant subgraphs into initializers and name every node uniquely and stably.

Every pass is deterministic, so preparing the same file twice gives the same node names (plans name nodes
and `split` re-prepares the model to cut it).
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from nndeploy.errors import ModelError

NONDETERMINISTIC_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)
_KEEP_INIT_ELEMS = 4096  # initializers up to this size stay in the copy given to shape inference
_MAX_FOLD_ROUNDS = 6

Dims = list[int | str | None]  # a shape as read from a proto: int (static), str (symbolic), None (unknown)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_model(path: str | Path) -> onnx.ModelProto:
    """Read, check and return an ONNX model with its external data loaded (from the model's directory).

    Raises ModelError with one line for a missing file, a file that is not ONNX, a missing external
    data file, or a model the ONNX checker rejects."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{path}: no such file")
    if p.is_dir():
        raise ModelError(f"{path}: is a directory, not an ONNX model file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:
        raise ModelError(f"{path}: not an ONNX model file ({_first_line(e)})") from None
    if not model.HasField("graph") or model.ir_version <= 0:
        raise ModelError(f"{path}: not an ONNX model file (no graph or IR version)")
    base = p.parent
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if onnx.external_data_helper.uses_external_data(tensor):
            info = onnx.external_data_helper.ExternalDataInfo(tensor)
            if not (base / info.location).is_file():
                raise ModelError(
                    f"{path}: external data file '{info.location}' for tensor '{tensor.name}' "
                    f"is missing (looked in {base})"
                )
    try:
        onnx.checker.check_model(str(p))
    except Exception as e:
        if "topologically sorted" not in str(e):
            raise ModelError(f"{path}: fails the ONNX checker: {_first_line(e)}") from None
        sorted_copy = _light_copy(model, None)  # the checker wants sorted nodes; prepare_model sorts them
        _toposort(sorted_copy, str(path))
        try:
            onnx.checker.check_model(sorted_copy)
        except Exception as e2:
            raise ModelError(f"{path}: fails the ONNX checker: {_first_line(e2)}") from None
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(base))
    except Exception as e:
        raise ModelError(f"{path}: cannot read external data ({_first_line(e)})") from None
    return model


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def _dims(vi: onnx.ValueInfoProto) -> Dims | None:
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


def _shape_text(dims: Dims | None) -> str:
    return "?" if dims is None else "[" + ", ".join(str(d) if d is not None else "?" for d in dims) + "]"


def _bind(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None, batch: int | None, name: str
) -> None:
    """In-place form of `bind_input_shapes`."""
    inputs = real_inputs(model)
    by_name = {vi.name: vi for vi in inputs}
    listing = ", ".join(f"'{vi.name}' {_shape_text(_dims(vi))}" for vi in inputs) or "none"
    for key, shape in (input_shapes or {}).items():
        if key not in by_name:
            raise ModelError(f"{name}: no input named '{key}'; the model's inputs are: {listing}")
        shape = [int(d) for d in shape]
        if any(d <= 0 for d in shape):
            raise ModelError(f"{name}: input shape for '{key}' must have positive dims, got {shape}")
        old = _dims(by_name[key])
        if old is not None and len(old) != len(shape):
            raise ModelError(
                f"{name}: input '{key}' has rank {len(old)} {_shape_text(old)} but the given shape "
                f"{'x'.join(map(str, shape))} has {len(shape)} dims"
            )
    if batch is not None and batch <= 0:
        raise ModelError(f"{name}: batch must be positive, got {batch}")
    problems, hints, first_dim_dynamic = [], [], False
    for vi in inputs:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            continue
        if vi.name in (input_shapes or {}):
            tt.shape.ClearField("dim")
            for d in input_shapes[vi.name]:  # type: ignore[index]
                tt.shape.dim.add().dim_value = int(d)
            continue
        if not tt.HasField("shape"):
            problems.append(f"input '{vi.name}' has unknown rank")
            hints.append(f"--input-shape {vi.name}=...")
            continue
        if batch is not None and len(tt.shape.dim) >= 1:
            tt.shape.dim[0].Clear()
            tt.shape.dim[0].dim_value = batch
        dims = _dims(vi) or []
        dynamic = [d if d is not None else "?" for d in dims if not isinstance(d, int) or d <= 0]
        if dynamic:
            first_dim_dynamic |= not isinstance(dims[0], int)
            problems.append(f"input '{vi.name}' has dynamic dims {dynamic}")
            example = "x".join(str(d) if isinstance(d, int) and d > 0 else "1" for d in dims)
            hints.append(f"--input-shape {vi.name}={example}")
    if problems:
        tail = " (or --batch N for the first dim)" if first_dim_dynamic else ""
        raise ModelError(f"{name}: {'; '.join(problems)}; pass {' '.join(hints)}{tail}")


def bind_input_shapes(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None,
    batch: int | None,
    name: str = "model.onnx",
) -> onnx.ModelProto:
    """Fix every real input's shape: `input_shapes` gives full shapes (they win over `batch`), `batch` sets
    dim 0 of every other input of rank >= 1. Raises ModelError (prefixed with `name`) for an unknown input
    name, a rank mismatch, or any dim still dynamic afterwards."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _bind(out, input_shapes, batch, name)
    return out


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


def _toposort(model: onnx.ModelProto, name: str) -> None:
    """Sort nodes topologically in place, keeping the file's order where it is already valid."""
    nodes = list(model.graph.node)
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    deps = [{producer[t] for t in node_reads(n) if t in producer} for n in nodes]
    users: list[list[int]] = [[] for _ in nodes]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    missing = [len(d) for d in deps]
    ready = [i for i, m in enumerate(missing) if m == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            missing[u] -= 1
            if missing[u] == 0:
                heapq.heappush(ready, u)
    if len(order) < len(nodes):
        stuck = [nodes[i].name or f"{nodes[i].op_type} #{i}" for i in range(len(nodes)) if missing[i] > 0]
        raise ModelError(
            f"{name}: the graph has a cycle; {len(stuck)} nodes are on or after it, e.g. {stuck[:3]}"
        )
    if order != list(range(len(nodes))):
        model.graph.ClearField("node")
        model.graph.node.extend(nodes[i] for i in order)


def _light_copy(model: onnx.ModelProto, max_elems: int | None) -> onnx.ModelProto:
    """A copy whose external-data initializers (and those over `max_elems` elements) are graph inputs."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g = light.graph
    g.name = model.graph.name
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    g.sparse_initializer.extend(model.graph.sparse_initializer)
    declared = {vi.name for vi in model.graph.input}
    for init in model.graph.initializer:
        small = max_elems is None or math.prod(init.dims) <= max_elems
        if small and not onnx.external_data_helper.uses_external_data(init):
            g.initializer.append(init)
        elif init.name not in declared:
            g.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return light


def _infer_shapes(model: onnx.ModelProto, warnings: list[str], name: str) -> None:
    """Run ONNX shape inference (strict, with data propagation; non-strict if that fails) on a copy
    without large weights, and write the inferred value_info and output types back into `model`."""
    light = _light_copy(model, _KEEP_INIT_ELEMS)
    try:
        inferred = shape_inference.infer_shapes(light, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:
        warnings.append(f"strict shape inference failed ({_first_line(e)}); continuing with partial shapes")
        try:
            inferred = shape_inference.infer_shapes(light, data_prop=True)
        except Exception as e2:
            raise ModelError(f"{name}: shape inference failed: {_first_line(e2)}") from None
    inits = {t.name for t in model.graph.initializer}
    model.graph.ClearField("value_info")
    model.graph.value_info.extend(vi for vi in inferred.graph.value_info if vi.name not in inits)
    for out, new in zip(model.graph.output, inferred.graph.output, strict=True):
        out.CopyFrom(new)


def tensor_types(model: onnx.ModelProto) -> dict[str, tuple[int, Dims | None]]:
    """(ONNX elem type, shape) of every tensor the model declares: inputs, value_info, outputs and
    initializers (which win)."""
    types: dict[str, tuple[int, Dims | None]] = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        if vi.type.HasField("tensor_type"):
            types[vi.name] = (vi.type.tensor_type.elem_type, _dims(vi))
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


def _fold_constants(model: onnx.ModelProto) -> bool:
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


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    graph = model.graph
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node_reads(node))
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name not in used:
            del graph.initializer[i]


def _name_nodes(model: onnx.ModelProto) -> None:
    """Keep each first non-empty name; give every other node f"{op_type}_{index}" (suffixed if taken)."""
    nodes = model.graph.node
    taken: set[str] = set()
    keep = []
    for node in nodes:
        ok = bool(node.name) and node.name not in taken
        keep.append(ok)
        if ok:
            taken.add(node.name)
    for i, node in enumerate(nodes):
        if keep[i]:
            continue
        base = f"{node.op_type}_{i}"
        candidate, k = base, 1
        while candidate in taken:
            candidate, k = f"{base}_{k}", k + 1
        node.name = candidate
        taken.add(candidate)


def _trim_unused_outputs(model: onnx.ModelProto) -> None:
    """Blank optional outputs nothing reads (e.g. Dropout's mask) and drop trailing blanks."""
    graph = model.graph
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node_reads(node))
    opsets = {o.domain or "": o.version for o in model.opset_import}
    for node in graph.node:
        if all(o in used for o in node.output if o):
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opsets.get(node.domain or "", 1), node.domain)
        except Exception:
            continue
        formal = schema.outputs
        for i, name in enumerate(node.output):
            optional = (
                0 < i < len(formal) and formal[i].option == onnx.defs.OpSchema.FormalParameterOption.Optional
            )
            if name and name not in used and optional:
                node.output[i] = ""
        while node.output and not node.output[-1]:
            node.output.pop()


def _normalize_inputs(model: onnx.ModelProto) -> None:
    """Make weights pure initializers: drop them from graph.input (needs IR >= 4)."""
    reals = real_inputs(model)
    if len(reals) < len(model.graph.input):
        model.graph.ClearField("input")
        model.graph.input.extend(reals)
    model.ir_version = max(model.ir_version, 4)


def prepare_model_with_warnings(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    batch: int | None = None,
    name: str = "model.onnx",
) -> tuple[onnx.ModelProto, list[str]]:
    """`prepare_model`, also returning the warnings collected on the way (one line each)."""
    warnings: list[str] = []
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _normalize_inputs(out)
    _bind(out, input_shapes, batch, name)
    _toposort(out, name)
    _trim_unused_outputs(out)
    for _ in range(_MAX_FOLD_ROUNDS):
        _infer_shapes(out, warnings, name)
        if not _fold_constants(out):
            break
    else:
        _infer_shapes(out, warnings, name)
    _drop_unused_initializers(out)
    _name_nodes(out)
    return out, list(dict.fromkeys(warnings))


def prepare_model(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    batch: int | None = None,
    name: str = "model.onnx",
) -> onnx.ModelProto:
    """Bind input shapes, sort nodes topologically, infer static shapes, fold constant subgraphs into
    initializers, drop unused initializers and name every node uniquely and stably. Returns a new model."""
    return prepare_model_with_warnings(model, input_shapes, batch, name)[0]
