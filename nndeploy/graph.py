"""ONNX model -> Graph: one Node per operator in topological order, with static tensor shapes and the
per-node cost features (FLOPs, bytes, weights) the planner needs.

`load_graph` and `load_prepared_model` run the same preparation (nndeploy.model_prep), so the node names
in a plan match the model that `split` cuts later.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from nndeploy.constant_folding import Dims, node_reads, tensor_types
from nndeploy.errors import ModelError
from nndeploy.model_prep import (
    file_sha256,
    load_model,
    prepare_model,
    prepare_model_with_warnings,
    real_inputs,
)
from nndeploy.op_costs import node_cost
from nndeploy.shape_probe import open_tensors
from nndeploy.types import Graph, Node, TensorSpec

_ELEM_NAMES: dict[int, str] = {
    TensorProto.FLOAT: "float32",
    TensorProto.DOUBLE: "float64",
    TensorProto.FLOAT16: "float16",
    TensorProto.BFLOAT16: "bfloat16",
    TensorProto.INT64: "int64",
    TensorProto.INT32: "int32",
    TensorProto.INT16: "int16",
    TensorProto.INT8: "int8",
    TensorProto.UINT64: "uint64",
    TensorProto.UINT32: "uint32",
    TensorProto.UINT16: "uint16",
    TensorProto.UINT8: "uint8",
    TensorProto.BOOL: "bool",
    TensorProto.STRING: "string",
    TensorProto.COMPLEX64: "complex64",
    TensorProto.COMPLEX128: "complex128",
    TensorProto.FLOAT8E4M3FN: "float8e4m3fn",
    TensorProto.FLOAT8E5M2: "float8e5m2",
    TensorProto.INT4: "int4",
    TensorProto.UINT4: "uint4",
}


def elem_type_name(onnx_elem_type: int) -> str:
    """Numpy-style dtype name of an ONNX element type ('float32', 'int64', 'bfloat16', ...)."""
    if onnx_elem_type in _ELEM_NAMES:
        return _ELEM_NAMES[onnx_elem_type]
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(onnx_elem_type)).name.replace("_", "")
    except Exception:
        return "float32"


def _spec(name: str, elem: int, dims: Dims | None, ref: TensorSpec | None) -> tuple[TensorSpec, bool]:
    """TensorSpec from a declared type; unknown dims are estimated from `ref` (second value: estimated)."""
    dtype = elem_type_name(elem) if elem else (ref.dtype if ref is not None else "float32")
    if dims is not None and all(isinstance(d, int) and d >= 0 for d in dims):
        return TensorSpec(name, tuple(int(d) for d in dims), dtype), False  # type: ignore[arg-type]
    if dims is None:
        shape = ref.shape if ref is not None else ()
    else:
        same_rank = ref is not None and len(ref.shape) == len(dims)
        shape = tuple(
            d if isinstance(d, int) and d >= 0 else (ref.shape[i] if same_rank else 1)  # type: ignore[union-attr]
            for i, d in enumerate(dims)
        )
    return TensorSpec(name, shape, dtype), True


def analyze(
    model: onnx.ModelProto,
    model_path: str,
    model_sha256: str,
    input_shapes: Mapping[str, Sequence[int]],
    batch: int,
) -> Graph:
    """Analyse a prepared model (see `nndeploy.model_prep.prepare_model`) into a Graph.

    Each node lists its activation inputs (weights go to `params`), its FLOPs and bytes from the cost
    model, and whether that cost is an estimate. Tensors without a static shape get an estimate (the
    shape of the producing node's largest input) and a warning."""
    types = tensor_types(model)
    params = {
        t.name: TensorSpec(t.name, tuple(int(d) for d in t.dims), elem_type_name(t.data_type))
        for t in model.graph.initializer
    }
    tensors: dict[str, TensorSpec] = {}
    guessed: list[tuple[str, str]] = []
    inputs = [vi.name for vi in real_inputs(model)]
    for name in inputs:
        spec, est = _spec(name, *types.get(name, (0, None)), None)
        tensors[name] = spec
        if est:
            guessed.append((name, "the graph input"))
    nodes: list[Node] = []
    unknown: dict[str, list[str]] = {}
    for node in model.graph.node:
        reads = list(dict.fromkeys(node_reads(node)))
        acts = [n for n in reads if n not in params]
        weights = [n for n in reads if n in params]
        known_ins = [tensors[n] for n in acts if n in tensors] or [params[n] for n in weights]
        ref = max(known_ins, key=lambda s: s.numel, default=None)
        outputs = [o for o in node.output if o]
        for out in outputs:
            spec, est = _spec(out, *types.get(out, (0, None)), ref)
            tensors[out] = spec
            if est:
                guessed.append((out, node.name))
        cost = node_cost(node, tensors, params)
        if not cost.known:
            unknown.setdefault(node.op_type, []).append(node.name)
        nodes.append(
            Node(
                name=node.name,
                op_type=node.op_type,
                inputs=tuple(acts),
                outputs=tuple(outputs),
                params=tuple(weights),
                flops=float(cost.flops),
                bytes_read=int(cost.bytes_read),
                bytes_written=int(cost.bytes_written),
                param_bytes=int(sum(params[w].nbytes for w in weights)),
                out_bytes=int(sum(tensors[o].nbytes for o in outputs)),
                dtype=tensors[outputs[0]].dtype if outputs else "float32",
                estimated=not cost.known,
            )
        )
    warnings = [
        f"op '{op}' ({len(names)} node{'s' if len(names) > 1 else ''}, e.g. {names[0]}) is not known to "
        "the cost model; its cost is a conservative estimate"
        for op, names in unknown.items()
    ]
    if guessed:
        name, where = guessed[0]
        warnings.append(
            f"{len(guessed)} tensor(s) have no static shape after shape inference (e.g. '{name}' from "
            f"{where}); their sizes are estimates"
        )
    return Graph(
        model_path=model_path,
        model_sha256=model_sha256,
        nodes=tuple(nodes),
        tensors=tensors,
        inputs=tuple(inputs),
        outputs=tuple(o.name for o in model.graph.output),
        param_bytes={name: spec.nbytes for name, spec in params.items()},
        input_shapes={k: tuple(int(d) for d in v) for k, v in input_shapes.items()},
        batch=int(batch),
        warnings=tuple(warnings),
        non_tensors=frozenset(
            vi.name
            for vi in (*model.graph.value_info, *model.graph.output)
            if vi.type.WhichOneof("value") not in ("tensor_type", None)
        ),
        data_dependent=frozenset(open_tensors(model)),
    )


def io_specs(model: onnx.ModelProto) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Static input and output specs of a stage model."""

    def spec(vi: onnx.ValueInfoProto) -> TensorSpec:
        tensor = vi.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        dims = tensor.shape.dim
        if not tensor.HasField("shape") or any(not d.HasField("dim_value") or d.dim_value < 0 for d in dims):
            shown = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in dims]
            raise ModelError(
                f"stage tensor '{vi.name}' has no static shape {shown if tensor.HasField('shape') else '?'}; "
                "plan the model again with this nndeploy (it fixes every boundary shape)"
            )
        return TensorSpec(vi.name, tuple(d.dim_value for d in dims), dtype)

    inits = {init.name for init in model.graph.initializer}
    return (
        tuple(spec(vi) for vi in model.graph.input if vi.name not in inits),
        tuple(spec(vi) for vi in model.graph.output),
    )


def check_fixed_outputs(graph: Graph) -> None:
    """Refuse, in one line, a model whose outputs' sizes depend on the input data."""
    dependent = [name for name in graph.outputs if name in graph.data_dependent]
    if not dependent:
        return
    producers = {out: node for node in graph.nodes for out in node.outputs}
    named = ", ".join(
        f"'{name}'"
        + (f" (from {producers[name].op_type} '{producers[name].name}')" if name in producers else "")
        for name in dependent
    )
    raise ModelError(
        f"{graph.model_path}: output {named} has no fixed shape: it depends on the input data (or could "
        "not be measured); nndeploy serves fixed-shape outputs: make it fixed-size in the model (e.g. pad to "
        "a maximum count)"
    )


def load_prepared_model(
    path: str | Path,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    batch: int | None = None,
) -> onnx.ModelProto:
    """Load, check and prepare a model file (the same model, node names included, as `load_graph` sees)."""
    return prepare_model(load_model(path), input_shapes, batch, name=str(path))


def load_graph(
    path: str | Path,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    batch: int | None = None,
) -> Graph:
    """Load, check, prepare and analyse a model file. The Graph records the bound shape of every real
    input and the batch (given, or dim 0 of the first input), so preparing again with them reproduces it."""
    return load_graph_and_model(path, input_shapes, batch)[0]


def load_graph_and_model(
    path: str | Path,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    batch: int | None = None,
) -> tuple[Graph, onnx.ModelProto]:
    """`load_graph`, and the prepared model it analysed (for callers that also look at the nodes)."""
    prepared, prep_warnings = prepare_model_with_warnings(
        load_model(path), input_shapes, batch, name=str(path)
    )
    types = tensor_types(prepared)
    shapes = {vi.name: tuple(int(d) for d in types[vi.name][1] or ()) for vi in real_inputs(prepared)}  # type: ignore[arg-type]
    if batch is None:
        first = next(iter(shapes.values()), ())
        batch = first[0] if first and first[0] > 0 else 1  # an empty first input says nothing
    graph = analyze(prepared, str(path), file_sha256(path), shapes, batch)
    return dataclasses.replace(graph, warnings=tuple(prep_warnings) + graph.warnings), prepared
