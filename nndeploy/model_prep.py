"""Loading and preparing ONNX models: ModelProto -> ModelProto passes that bind input shapes, sort nodes,
infer static shapes, fold constant subgraphs into initializers and name every node uniquely and stably.

Every pass is deterministic, so preparing the same file twice gives the same node names (plans name nodes
and `split` re-prepares the model to cut it).
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx
from onnx import shape_inference

from nndeploy.constant_folding import (
    MAX_FOLD_ROUNDS,
    Dims,
    drop_unused_initializers,
    fold_constants,
    node_reads,
    real_inputs,
    value_dims,
)
from nndeploy.errors import ModelError, first_line
from nndeploy.paths import inside
from nndeploy.shape_probe import fill_open_shapes

_KEEP_INIT_ELEMS = 4096  # initializers up to this size stay in the copy given to shape inference


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
        raise ModelError(f"{path}: not an ONNX model file ({first_line(e)})") from None
    if not model.HasField("graph") or model.ir_version <= 0:
        raise ModelError(f"{path}: not an ONNX model file (no graph or IR version)")
    base = p.parent
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if onnx.external_data_helper.uses_external_data(tensor):
            info = onnx.external_data_helper.ExternalDataInfo(tensor)
            if inside(base, info.location) is None:
                raise ModelError(
                    f"{path}: external data location '{info.location}' for tensor '{tensor.name}' is outside "
                    f"the model's folder {base}; refusing to read it (keep the data files beside the model)"
                )
            if not (base / info.location).is_file():
                raise ModelError(
                    f"{path}: external data file '{info.location}' for tensor '{tensor.name}' "
                    f"is missing (looked in {base})"
                )
    unproduced = _unproduced_inputs(model)
    if unproduced:
        shown = ", ".join(f"'{t}' (read by {n})" for t, n in unproduced[:5])
        raise ModelError(
            f"{path}: {len(unproduced)} tensor(s) that no node, initializer or graph input provides: "
            f"{shown}; the model file is incomplete (a weight missing?)"
        )
    try:
        onnx.checker.check_model(str(p))
    except Exception as e:
        # The checker wants sorted nodes and graph outputs with a shape field; prepare_model sorts the
        # nodes and infers the outputs' shapes (onnxruntime, too, runs such files)
        if "topologically sorted" not in str(e) and "'shape' of 'type' is required" not in str(e):
            raise ModelError(f"{path}: fails the ONNX checker: {first_line(e)}") from None
        sorted_copy = _light_copy(model, None)
        _toposort(sorted_copy, str(path))
        for out in sorted_copy.graph.output:
            if out.type.HasField("tensor_type"):
                out.type.tensor_type.shape.SetInParent()
        try:
            onnx.checker.check_model(sorted_copy)
        except Exception as e2:
            raise ModelError(f"{path}: fails the ONNX checker: {first_line(e2)}") from None
    _refuse_non_tensor_io(model, str(path))
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(base))
    except Exception as e:
        raise ModelError(f"{path}: cannot read external data ({first_line(e)})") from None
    return model


def _refuse_non_tensor_io(model: onnx.ModelProto, name: str) -> None:
    """ModelError for a model input or output that is not a tensor (a sequence, optional or map)."""
    kinds = {"sequence_type": "a sequence", "optional_type": "an optional", "map_type": "a map"}
    for role, values in (("input", real_inputs(model)), ("output", list(model.graph.output))):
        for vi in values:
            kind = vi.type.WhichOneof("value")
            if kind != "tensor_type":
                what = kinds.get(kind or "", kind or "untyped")
                raise ModelError(
                    f"{name}: {role} '{vi.name}' is {what}, not a tensor; "
                    "nndeploy's stages and its KServe v2 endpoint carry tensors only: export the model with "
                    "tensor inputs and outputs (sequences inside the model are fine)"
                )


def _unproduced_inputs(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(tensor, reading node) for every top-level node input nothing in the graph provides."""
    graph = model.graph
    available = {vi.name for vi in graph.input} | {t.name for t in graph.initializer}
    available |= {t.name for t in graph.sparse_initializer}
    available |= {out for node in graph.node for out in node.output}
    return [
        (name, f"{node.op_type} node '{node.name or index}'")
        for index, node in enumerate(graph.node)
        for name in node.input
        if name and name not in available
    ]


def _shape_text(dims: Dims | None) -> str:
    return "?" if dims is None else "[" + ", ".join(str(d) if d is not None else "?" for d in dims) + "]"


def _bind(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None, batch: int | None, name: str
) -> None:
    """In-place form of `bind_input_shapes`."""
    inputs = real_inputs(model)
    by_name = {vi.name: vi for vi in inputs}
    listing = ", ".join(f"'{vi.name}' {_shape_text(value_dims(vi))}" for vi in inputs) or "none"
    for key, shape in (input_shapes or {}).items():
        if key not in by_name:
            raise ModelError(f"{name}: no input named '{key}'; the model's inputs are: {listing}")
        shape = [int(d) for d in shape]
        if any(d < 0 for d in shape):  # 0 is an empty tensor, which ONNX allows
            raise ModelError(f"{name}: input shape for '{key}' must not have negative dims, got {shape}")
        old = value_dims(by_name[key])
        if old is not None and len(old) != len(shape):
            raise ModelError(
                f"{name}: input '{key}' has rank {len(old)} {_shape_text(old)} but the given shape "
                f"{'x'.join(map(str, shape))} has {len(shape)} dims"
            )
    if batch is not None and batch <= 0:
        raise ModelError(f"{name}: batch must be positive, got {batch}")
    problems, hints, first_dim_dynamic = [], [], False
    declared = {vi.name: value_dims(vi) for vi in inputs}
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
        dims = value_dims(vi) or []  # exporters write a dynamic dim as '?', a name, 0 or -1
        dynamic = [d if d is not None else "?" for d in dims if not isinstance(d, int) or d <= 0]
        if dynamic:
            first_dim_dynamic |= not isinstance(dims[0], int)
            problems.append(f"input '{vi.name}' has dynamic dims {dynamic}")
            example = "x".join(str(d) if isinstance(d, int) and d > 0 else f"<{d or '?'}>" for d in dims)
            hints.append(f"--input-shape {vi.name}={example}")
    if problems:
        tail = " (or --batch N for the first dim)" if first_dim_dynamic else ""
        raise ModelError(f"{name}: {'; '.join(problems)}; pass {' '.join(hints)}{tail}")
    if any(value_dims(vi) != declared[vi.name] for vi in inputs):
        # Outputs declared for the file's own input shapes (an exported batch of 1) would contradict the
        # bound ones: forget their dims, so shape inference derives them from the bound inputs.
        for out in model.graph.output:
            if out.type.HasField("tensor_type") and out.type.tensor_type.HasField("shape"):
                for dim in out.type.tensor_type.shape.dim:
                    dim.Clear()


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


def _unpin_outputs(model: onnx.ModelProto) -> None:
    """Forget graph output dims declared negative (exporters write -1 for "any") so inference fills them."""
    for out in model.graph.output:
        tensor = out.type.tensor_type
        if out.type.HasField("tensor_type") and tensor.HasField("shape"):
            for dim in tensor.shape.dim:
                if dim.HasField("dim_value") and dim.dim_value < 0:
                    dim.Clear()


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
        warnings.append(f"strict shape inference failed ({first_line(e)}); continuing with partial shapes")
        try:
            inferred = shape_inference.infer_shapes(light, data_prop=True)
        except Exception as e2:
            raise ModelError(f"{name}: shape inference failed: {first_line(e2)}") from None
    inits = {t.name for t in model.graph.initializer}
    model.graph.ClearField("value_info")
    model.graph.value_info.extend(vi for vi in inferred.graph.value_info if vi.name not in inits)
    for out, new in zip(model.graph.output, inferred.graph.output, strict=True):
        out.CopyFrom(new)


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
    _unpin_outputs(out)
    _toposort(out, name)
    _trim_unused_outputs(out)
    for _ in range(MAX_FOLD_ROUNDS):
        _infer_shapes(out, warnings, name)
        if not fold_constants(out):
            break
    else:
        _infer_shapes(out, warnings, name)
    drop_unused_initializers(out)
    fill_open_shapes(out, warnings)
    _name_nodes(out)
    return out, list(dict.fromkeys(warnings))


def prepare_model(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    batch: int | None = None,
    name: str = "model.onnx",
) -> onnx.ModelProto:
    """Bind input shapes, sort nodes topologically, infer static shapes, fold constant subgraphs into
    initializers, drop unused initializers, measure with onnxruntime the shapes inference leaves open, and
    name every node uniquely and stably. Returns a new model."""
    return prepare_model_with_warnings(model, input_shapes, batch, name)[0]
