"""Opset upgrade before TVM imports a model: an old opset brought to the one TVM's frontend is written for.

For a model's opset, each TVM converter takes its newest implementation not newer than that opset, and
when all its implementations are newer, the newest one, whatever the op meant at the model's opset. Most
ops mean the same across versions; some do not. Measured on TVM 0.27: Upsample-7 (scales as an attribute)
imports and computes wrong numbers, Slice-1 (starts and ends as attributes) does not import. Most of
TVM's converters are written for opset 13 (Relu, MatMul, Reshape, Gather, Slice, the reductions, ...), so
models below it are converted with onnx's version converter. Its Resize 10 -> 11 adapter drops Resize-10's
meaning (asymmetric coordinates, nearest rounding down) and takes Resize-11's defaults, so those two
attributes are set back on every Resize the conversion carried over that step; its PRelu 6 -> 7 adapter
leaves a per-channel slope of shape (C,) to broadcast over the last dim, so such slopes get shape
(C, 1, ...). Other adapters are missing (Hardmax 12 -> 13 only renumbers the op, whose meaning changed),
so every upgrade is run against the original with seeded random inputs, and kept only if the two agree.
The original runs on onnxruntime, or on onnx's reference evaluator where onnxruntime has no kernel for
its opset (PRelu-6, AveragePool-1, Gemm-6, ...). Where the converter fails or they differ, the model stays
as it is (and the build-time check, run against the original, sends what TVM then gets wrong to
onnxruntime).
"""

from __future__ import annotations

import onnx

FRONTEND_OPSET = 13


def default_opset(model: onnx.ModelProto) -> int:
    """The model's version of the default ONNX domain."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def upgrade_opset(model: onnx.ModelProto, target: int = FRONTEND_OPSET) -> onnx.ModelProto:
    """The model converted to `target` when its opset is older (meaning kept), else the model itself; the
    model itself too when onnx's version converter cannot convert it."""
    from onnx import version_converter

    version = default_opset(model)
    if version >= target:
        return model
    try:
        upgraded = version_converter.convert_version(model, target)
    except Exception:  # the converter raises bare RuntimeErrors; an adapter may be missing
        return model
    if version <= 10:
        _keep_resize_10_meaning(upgraded)
    if version <= 6:
        _keep_prelu_6_channel_slopes(model, upgraded)
    return upgraded if _same_results(model, upgraded) else model


def _same_results(original: onnx.ModelProto, upgraded: onnx.ModelProto) -> bool:
    """Whether both compute the same outputs (to 1e-6) on seeded random inputs (small integers, which may
    be sizes), each run on onnxruntime or, where it has no kernel, onnx's reference evaluator; True when
    neither can run the original (nothing to compare with)."""
    import numpy as np

    from nndeploy.graph import io_specs
    from nndeploy.oracle import random_inputs, run_model

    inputs = random_inputs(io_specs(original)[0], 0, int_high=3)
    try:
        before = run_model(original, inputs)
    except Exception:  # neither runs it: onnxruntime's errors have no common base class
        return True
    try:
        after = run_model(upgraded, inputs)
    except Exception:
        return False
    return all(
        np.asarray(after[name]).shape == np.asarray(value).shape
        and np.allclose(after[name], value, rtol=1e-6, atol=1e-6, equal_nan=True)
        for name, value in before.items()
    )


def _keep_prelu_6_channel_slopes(original: onnx.ModelProto, upgraded: onnx.ModelProto) -> None:
    """Reshape every constant 1-D slope of C values of a PRelu over an input with C channels (dim 1) to
    (C, 1, ...): PRelu-6 applied such a slope per channel, PRelu-7 broadcasts it over the last dim."""
    from onnx import numpy_helper, shape_inference

    from nndeploy.constant_folding import tensor_types

    types = tensor_types(shape_inference.infer_shapes(original))
    weights = {init.name: init for init in upgraded.graph.initializer}
    for node in upgraded.graph.node:
        if node.op_type != "PRelu" or len(node.input) < 2 or node.input[1] not in weights:
            continue
        dims = types.get(node.input[0], (0, None))[1] or []
        slope = numpy_helper.to_array(weights[node.input[1]])
        if slope.ndim == 1 and slope.size > 1 and len(dims) >= 3 and dims[1] == slope.size:
            shaped = slope.reshape((slope.size,) + (1,) * (len(dims) - 2))
            weights[node.input[1]].CopyFrom(numpy_helper.from_array(shaped, node.input[1]))
            for listed in upgraded.graph.input:  # IR 3 files list weights as graph inputs too
                if listed.name == node.input[1]:
                    listed.type.tensor_type.shape.ClearField("dim")
                    for size in shaped.shape:
                        listed.type.tensor_type.shape.dim.add().dim_value = size


def _keep_resize_10_meaning(model: onnx.ModelProto) -> None:
    """Set Resize-10's coordinate mapping (asymmetric) and nearest rounding (floor) on every Resize, all of
    which were Resize-10 or Upsample nodes before the conversion."""
    for node in model.graph.node:
        if node.op_type != "Resize":
            continue
        kept = [a for a in node.attribute if a.name not in ("coordinate_transformation_mode", "nearest_mode")]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.append(onnx.helper.make_attribute("coordinate_transformation_mode", "asymmetric"))
        mode = next((a.s.decode() for a in kept if a.name == "mode"), "nearest")
        if mode == "nearest":
            node.attribute.append(onnx.helper.make_attribute("nearest_mode", "floor"))
