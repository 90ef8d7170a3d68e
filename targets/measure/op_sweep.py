"""The op sweep `nndeploy profile` times: single-node ONNX models of the common op types at several sizes.

Each entry is one operator with its activations as graph inputs and its weights as initializers, built
with onnx.helper; output shapes are left to shape inference. `quick=True` keeps a few sizes per op (tests).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


@dataclass(frozen=True)
class SweepCase:
    """One single-node model to time; `label` says what it is (e.g. 'Conv 3x3 64->64 @56')."""

    label: str
    model: onnx.ModelProto


def _case(
    label: str,
    op: str,
    inputs: Sequence[tuple[str, Sequence[int]]],
    weights: Sequence[tuple[str, Sequence[int]]] = (),
    int_weights: Sequence[tuple[str, Sequence[int]]] = (),
    outputs: int = 1,
    **attrs: Any,
) -> SweepCase:
    """A one-node model: `inputs` are float32 graph inputs, `weights` float32 initializers, `int_weights`
    int64 initializers given by value (e.g. a Reshape's target shape)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)
        for name, shape in weights
    ]
    inits += [numpy_helper.from_array(np.array(value, dtype=np.int64), name) for name, value in int_weights]
    names = [name for name, _ in inputs] + [name for name, _ in weights] + [n for n, _ in int_weights]
    outs = [f"y{i}" for i in range(outputs)]
    node = helper.make_node(op, names, outs, name="op", **attrs)
    graph = helper.make_graph(
        [node],
        "sweep",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)) for name, shape in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outs],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return SweepCase(label, onnx.shape_inference.infer_shapes(model, strict_mode=True))


def _conv(cin: int, cout: int, size: int, kernel: int, stride: int = 1, groups: int = 1) -> SweepCase:
    pad = kernel // 2
    kind = "dw" if groups > 1 else f"{kernel}x{kernel}"
    return _case(
        f"Conv {kind} s{stride} {cin}->{cout} @{size}",
        "Conv",
        [("x", (1, cin, size, size))],
        [("w", (cout, cin // groups, kernel, kernel)), ("b", (cout,))],
        kernel_shape=[kernel, kernel],
        strides=[stride, stride],
        pads=[pad] * 4,
        group=groups,
    )


def _conv_cases(quick: bool) -> Iterator[SweepCase]:
    full = [
        (3, 32, 224, 3, 2, 1),
        (3, 64, 224, 7, 2, 1),
        (64, 64, 56, 3, 1, 1),
        (128, 128, 28, 3, 1, 1),
        (256, 256, 14, 3, 1, 1),
        (512, 512, 7, 3, 1, 1),
        (32, 64, 112, 3, 1, 1),
        (64, 128, 56, 3, 2, 1),
        (128, 256, 28, 3, 2, 1),
        (16, 32, 56, 5, 1, 1),
        (96, 128, 28, 5, 1, 1),
        (64, 256, 56, 1, 1, 1),
        (256, 64, 56, 1, 1, 1),
        (512, 128, 28, 1, 1, 1),
        (128, 512, 28, 1, 1, 1),
        (1024, 256, 14, 1, 1, 1),
        (256, 1024, 14, 1, 1, 1),
        (2048, 512, 7, 1, 1, 1),
        (512, 2048, 7, 1, 1, 1),
        (16, 96, 112, 1, 1, 1),
        (96, 24, 56, 1, 1, 1),
        (144, 24, 56, 1, 1, 1),
        (32, 192, 28, 1, 1, 1),
        (320, 1280, 7, 1, 1, 1),
        (512, 1000, 13, 1, 1, 1),
        (32, 32, 112, 3, 1, 32),
        (96, 96, 112, 3, 2, 96),
        (144, 144, 56, 3, 1, 144),
        (192, 192, 28, 3, 1, 192),
        (384, 384, 14, 3, 1, 384),
        (576, 576, 14, 3, 2, 576),
        (960, 960, 7, 3, 1, 960),
    ]
    picked = [full[i] for i in (2, 4, 11, 15, 18, 27, 29)] if quick else full
    for cin, cout, size, kernel, stride, groups in picked:
        yield _conv(cin, cout, size, kernel, stride, groups)


def _matmul_cases(quick: bool) -> Iterator[SweepCase]:
    shapes = [
        ((128, 768), (768, 768)),
        ((128, 768), (768, 3072)),
        ((128, 3072), (3072, 768)),
        ((512, 256), (256, 256)),
        ((1, 1024), (1024, 1024)),
        ((32, 128), (128, 512)),
    ]
    batched = [((12, 128, 64), (12, 64, 128)), ((12, 128, 128), (12, 128, 64)), ((4, 64, 32), (4, 32, 64))]
    for a, b in shapes[:3] if quick else shapes:
        yield _case(f"MatMul {a}x{b}", "MatMul", [("x", a)], [("w", b)])
    for a, b in batched[:1] if quick else batched:
        yield _case(f"MatMul {a}x{b}", "MatMul", [("x", a), ("y", b)])
    gemms = [(1, 2048, 1000), (1, 1024, 1000), (1, 4096, 1000), (8, 1280, 1000), (64, 512, 512)]
    for m, k, n in gemms[:2] if quick else gemms:
        yield _case(f"Gemm {m}x{k}x{n}", "Gemm", [("x", (m, k))], [("w", (n, k)), ("b", (n,))], transB=1)


_FEATURE_MAPS = [(64, 112), (64, 56), (256, 56), (128, 28), (512, 28), (256, 14), (1024, 14), (2048, 7)]
_ROWS = [(128, 768), (128, 3072), (512, 256), (16, 64)]


def _elementwise_cases(quick: bool) -> Iterator[SweepCase]:
    maps = _FEATURE_MAPS[1::3] if quick else _FEATURE_MAPS
    rows = _ROWS[:1] if quick else _ROWS
    shapes = [(1, c, s, s) for c, s in maps] + [(1, *r) for r in rows]
    for shape in shapes:
        for op in ("Add", "Mul") if not quick else ("Add",):
            yield _case(f"{op} {shape}", op, [("x", shape), ("y", shape)])
        yield _case(f"Add+bias {shape}", "Add", [("x", shape)], [("b", (shape[1], *[1] * (len(shape) - 2)))])
        yield _case(f"Sum {shape}", "Sum", [("x", shape), ("y", shape)])
        for op in ("Relu", "Sigmoid", "Erf", "Tanh") if not quick else ("Relu", "Sigmoid"):
            yield _case(f"{op} {shape}", op, [("x", shape)])
        yield _case(
            f"Clip {shape}",
            "Clip",
            [("x", shape)],
            [("lo", ()), ("hi", ())],
        )


def _layout_cases(quick: bool) -> Iterator[SweepCase]:
    maps = _FEATURE_MAPS[1::3] if quick else _FEATURE_MAPS
    for c, s in maps:
        shape = (1, c, s, s)
        yield _case(f"MaxPool 3x3 s2 {shape}", "MaxPool", [("x", shape)], kernel_shape=[3, 3], strides=[2, 2])
        yield _case(
            f"AveragePool 3x3 s1 {shape}",
            "AveragePool",
            [("x", shape)],
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        )
        yield _case(f"GlobalAveragePool {shape}", "GlobalAveragePool", [("x", shape)])
        yield _case(
            f"BatchNormalization {shape}",
            "BatchNormalization",
            [("x", shape)],
            [("s", (c,)), ("b", (c,)), ("m", (c,)), ("v", (c,))],
        )
        yield _case(f"Concat 2x {shape}", "Concat", [("x", shape), ("y", (1, c // 2, s, s))], axis=1)
        yield _case(f"Transpose {shape}", "Transpose", [("x", shape)], perm=[0, 2, 3, 1])
        yield _case(f"Reshape {shape}", "Reshape", [("x", shape)], int_weights=[("shape", [1, c, s * s])])
        if not quick:
            yield _case(f"LRN {shape}", "LRN", [("x", shape)], size=5)
            yield _case(
                f"MaxPool 2x2 s2 {shape}", "MaxPool", [("x", shape)], kernel_shape=[2, 2], strides=[2, 2]
            )
    rows = _ROWS[:2] if quick else _ROWS
    for r in rows:
        shape = (1, *r)
        yield _case(f"Softmax {shape}", "Softmax", [("x", shape)], axis=-1)
        yield _case(
            f"LayerNormalization {shape}",
            "LayerNormalization",
            [("x", shape)],
            [("g", (r[-1],)), ("b", (r[-1],))],
            axis=-1,
        )
    heads = [(12, 128, 128), (4, 128, 128)] if not quick else [(4, 128, 128)]
    for h in heads:
        yield _case(f"Softmax {h}", "Softmax", [("x", (1, *h))], axis=-1)
        yield _case(f"Transpose {h}", "Transpose", [("x", (1, *h))], perm=[0, 2, 1, 3])
    yield _case("Softmax (1, 1000)", "Softmax", [("x", (1, 1000))], axis=-1)


def sweep_cases(quick: bool = False) -> list[SweepCase]:
    """The sweep's single-node models (about 240; `quick`: about 65)."""
    return [
        *_conv_cases(quick),
        *_matmul_cases(quick),
        *_elementwise_cases(quick),
        *_layout_cases(quick),
    ]
