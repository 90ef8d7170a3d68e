"""Static shapes that ONNX shape inference leaves open after the inputs are bound: measured by running the
prepared model with onnxruntime, and the tensors whose shape truly depends on the input data told apart."""

from __future__ import annotations

import onnx

from nndeploy.constant_folding import real_inputs, tensor_types, value_dims
from nndeploy.errors import first_line
from nndeploy.types import TensorSpec

# Ops whose output shape is a function of their input values, whatever the inputs' shapes.
DATA_DEPENDENT_OPS = frozenset({"NonZero", "Unique", "Compress", "NonMaxSuppression"})


def is_static(dims: list[int | str | None] | None) -> bool:
    """Whether every dimension is a known non-negative number (0 is an empty tensor)."""
    return dims is not None and all(isinstance(d, int) and d >= 0 for d in dims)


def open_tensors(model: onnx.ModelProto) -> list[str]:
    """Main-graph tensors (node and graph outputs) without a static shape, in graph order."""
    declared = {vi.name: vi for vi in [*model.graph.value_info, *model.graph.output]}
    names = [o for node in model.graph.node for o in node.output if o]
    names += [o.name for o in model.graph.output if o.name not in names]
    found = []
    for name in dict.fromkeys(names):
        vi = declared.get(name)
        if vi is not None and vi.type.WhichOneof("value") not in ("tensor_type", None):
            continue  # sequences, optionals and maps have no shape to fill
        if vi is None or not is_static(value_dims(vi)):
            found.append(name)
    return found


def _downstream_of_data_ops(model: onnx.ModelProto, names: set[str]) -> set[str]:
    """The `names` produced by a data-dependent op or computed from such a tensor."""
    tainted: set[str] = set()
    for node in model.graph.node:
        if node.op_type in DATA_DEPENDENT_OPS or any(i in tainted for i in node.input):
            tainted.update(o for o in node.output if o)
    return tainted & names


def _input_sets(model: onnx.ModelProto) -> list[dict]:
    """Two random input sets and one of zeros, for the model's (bound) real inputs."""
    import numpy as np

    from nndeploy.oracle import random_inputs

    types = tensor_types(model)
    specs = []
    for vi in real_inputs(model):
        elem, dims = types[vi.name]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem).name
        specs.append(TensorSpec(vi.name, tuple(int(d) for d in dims or ()), dtype))  # type: ignore[arg-type]
    random = [random_inputs(tuple(specs), seed, int_high=3) for seed in (0, 1)]
    return [*random, {k: np.zeros_like(v) for k, v in random[0].items()}]


def probe_shapes(
    model: onnx.ModelProto, names: list[str]
) -> tuple[dict[str, tuple[int, ...]], set[str], str | None]:
    """Run `model` with onnxruntime to measure the shapes of the tensors `names`.

    Returns (shapes that were the same in every run, tensors whose shape depends on the data, why no run
    worked or None). A tensor is data-dependent when its shape differs between runs on different inputs, or
    when it comes from an op such as NonZero whose output size is a function of its input values."""
    from nndeploy.oracle import run_model

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    declared = {o.name for o in probe.graph.output}
    types = tensor_types(model)
    names = [n for n in names if n in declared or types.get(n, (0, None))[0]]  # an output needs a type
    for name in names:
        if name not in declared:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name][0], None))
    runs: list[dict[str, tuple[int, ...]]] = []
    problem = None
    for inputs in _input_sets(model):
        try:
            outputs = run_model(probe, inputs)
        except Exception as exc:  # onnxruntime refuses some inputs (indices out of range...): try the next
            problem = first_line(exc)
            continue
        runs.append({n: tuple(int(d) for d in getattr(outputs.get(n), "shape", ())) for n in names})
    if not runs:
        return {}, set(), problem or "no input set ran"
    varying = {n for n in names if len({run[n] for run in runs}) > 1}
    dependent = varying | _downstream_of_data_ops(model, set(names))
    return {n: runs[0][n] for n in names if n not in dependent}, dependent, None


def fill_open_shapes(model: onnx.ModelProto, warnings: list[str]) -> set[str]:
    """Write measured static shapes into `model`'s value_info and graph outputs for the tensors inference
    left open; returns the tensors still open (data-dependent, or not measurable), with a warning."""
    names = open_tensors(model)
    if not names:
        return set()
    shapes, dependent, problem = probe_shapes(model, names)
    if problem is not None:
        warnings.append(
            f"{len(names)} tensor(s) have no static shape (e.g. '{names[0]}') and onnxruntime could not run "
            f"the model on sample inputs to measure them: {problem}"
        )
        return set(names)
    types = tensor_types(model)
    outputs = {o.name: o for o in model.graph.output}
    kept = [vi for vi in model.graph.value_info if vi.name not in shapes]
    model.graph.ClearField("value_info")
    model.graph.value_info.extend(kept)
    for tensor, shape in shapes.items():
        info = onnx.helper.make_tensor_value_info(tensor, types.get(tensor, (0, None))[0], list(shape))
        if tensor in outputs:
            outputs[tensor].CopyFrom(info)
        else:
            model.graph.value_info.append(info)
    return dependent
