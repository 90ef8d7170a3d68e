"""ONNX-level rewrites applied to a stage model just before TVM imports it (numpy only, no TVM).

sums_to_adds: a variadic Sum becomes a chain of Adds. TVM imports Sum as a stack of its inputs (one more
dimension) and a reduction: a copy of every input at run time, and a 5-D tensor in a CNN that stops
ConvertLayout from moving convolutions to NHWC (resnet50's residual joins are Sums).

fold_batch_norms: an inference BatchNormalization right after a Conv whose weights are constants becomes
part of that Conv's weights and bias, as onnxruntime does when it builds a session. Without it TVM computes
the normalisation at run time and, before that, spends seconds folding its constant parts (resnet50:
~6-11 s of a ~20 s tuned build), and every tuning task carries four extra elementwise ops.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def fold_batch_norms(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every foldable Conv -> BatchNormalization pair merged into the Conv."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    outputs = {vi.name for vi in graph.output}
    folds: dict[str, tuple[onnx.NodeProto, onnx.NodeProto]] = {}
    for node in graph.node:
        conv = producers.get(node.input[0]) if node.op_type == "BatchNormalization" and node.input else None
        if conv is None or conv.op_type != "Conv" or len(node.output) != 1 or len(node.input) != 5:
            continue
        if consumers.get(conv.output[0], 0) != 1 or conv.output[0] in outputs:
            continue
        if not all(name in inits for name in [*node.input[1:], *conv.input[1:]]):
            continue
        folds[conv.name or conv.output[0]] = (conv, node)
    if not folds:
        return model

    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    new_inits = []
    dropped_bn = set()
    rewired = {}
    taken = {init.name for init in graph.initializer}
    for conv, bn in folds.values():
        weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        bias = (
            numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
            if len(conv.input) > 2 and conv.input[2]
            else np.zeros(weight.shape[0])
        )
        scale, shift, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:])
        epsilon = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        factor = scale / np.sqrt(var + epsilon)
        dtype = numpy_helper.to_array(inits[conv.input[1]]).dtype
        weight_name = _unique(f"{conv.input[1]}_bn_folded", taken)
        bias_name = _unique(f"{conv.output[0]}_bn_bias", taken)
        scaled = weight * factor.reshape(-1, *[1] * (weight.ndim - 1))
        new_inits.append(numpy_helper.from_array(scaled.astype(dtype), weight_name))
        new_inits.append(numpy_helper.from_array(((bias - mean) * factor + shift).astype(dtype), bias_name))
        rewired[id(conv)] = (weight_name, bias_name, bn.output[0])
        dropped_bn.add(bn.name or bn.output[0])

    del folded.graph.node[:]
    for original in graph.node:
        if original.op_type == "BatchNormalization" and (original.name or original.output[0]) in dropped_bn:
            continue
        node = folded.graph.node.add()
        node.CopyFrom(original)
        if id(original) in rewired:
            weight_name, bias_name, output = rewired[id(original)]
            del node.input[:]
            node.input.extend([original.input[0], weight_name, bias_name])
            node.output[0] = output
    folded.graph.initializer.extend(new_inits)
    used = {name for node in folded.graph.node for name in node.input} | outputs
    for field in (folded.graph.initializer, folded.graph.input):
        kept = [item for item in field if item.name in used or item.name not in inits]
        del field[:]
        field.extend(kept)
    gone = {conv.output[0] for conv, _ in folds.values()}
    kept_info = [vi for vi in folded.graph.value_info if vi.name not in gone]
    del folded.graph.value_info[:]
    folded.graph.value_info.extend(kept_info)
    return folded


def _unique(name: str, taken: set[str]) -> str:
    candidate, index = name, 1
    while candidate in taken:
        index += 1
        candidate = f"{name}_{index}"
    taken.add(candidate)
    return candidate


def sums_to_adds(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every Sum of two or more inputs written as Adds (the same broadcasting)."""
    if not any(node.op_type == "Sum" and len(node.input) >= 2 for node in model.graph.node):
        return model
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    del rewritten.graph.node[:]
    taken = {out for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type != "Sum" or len(node.input) < 2:
            rewritten.graph.node.add().CopyFrom(node)
            continue
        total = node.input[0]
        for index, addend in enumerate(node.input[1:], 1):
            last = index == len(node.input) - 1
            out = node.output[0] if last else _unique(f"{node.output[0]}_partial{index}", taken)
            name = node.name if last else _unique(f"{node.name or node.output[0]}_add{index}", taken)
            rewritten.graph.node.append(onnx.helper.make_node("Add", [total, addend], [out], name=name))
            total = out
    return rewritten
