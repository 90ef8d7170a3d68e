"""Architectures users deploy, built here with random (seeded) weights: the tuning corpus and the held-out
set are configurations of these (see benchmarks/corpus.py and benchmarks/held_out.py).

* detector: YOLO-style (Conv + SiLU stems with stride 2, C2f blocks, SPPF, upsample + concat neck, 1x1
  heads at strides 8, 16 and 32, flattened and concatenated);
* text_recogniser: CRNN/SVTR-style (a conv stack that pools height away, then transformer mixing blocks
  over the width sequence and a per-column classifier);
* text_segmenter: DBNet-style (a strided backbone, an FPN of 1x1 laterals, upsample + add, concat, and a
  probability head of 3x3 conv, two transposed convs and a sigmoid);
* mobile_classifier: MobileNetV1-style (depthwise 3x3 + pointwise 1x1, ReLU, global pool, Gemm).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from build_models import Builder

OPSET = 17


class ArchBuilder(Builder):
    """examples/build_models.py's builder, with the blocks of the architectures here."""

    def ops(self, op_type: str, inputs: list[str], count: int, **attrs: object) -> list[str]:
        """A node with `count` outputs."""
        outs = [self.name(op_type.lower()) for _ in range(count)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=f"{outs[0]}_op", **attrs))
        return outs

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int = 3,
        stride: int | tuple[int, int] = 1,
        act: str | None = "silu",
        groups: int = 1,
    ) -> str:
        """Conv (same padding) with bias, then SiLU, ReLU or nothing."""
        strides = [stride, stride] if isinstance(stride, int) else list(stride)
        w, b = self.weight("w", (cout, cin // groups, k, k)), self.weight("b", (cout,), scale=0.01)
        y = self.op("Conv", [x, w, b], kernel_shape=[k, k], strides=strides, pads=[k // 2] * 4, group=groups)
        if act == "silu":
            return self.op("Mul", [y, self.op("Sigmoid", [y])])
        return self.op("Relu", [y]) if act == "relu" else y

    def c2f(self, x: str, cin: int, cout: int, blocks: int) -> str:
        """YOLOv8's C2f: split, a chain of residual bottlenecks, concat of every step, 1x1 conv."""
        hidden = cout // 2
        y = self.conv(x, cin, 2 * hidden, 1)
        split = self.const("split", np.array([hidden, hidden], np.int64))
        parts = self.ops("Split", [y, split], 2, axis=1)
        last = parts[1]
        for _ in range(blocks):
            inner = self.conv(self.conv(last, hidden, hidden), hidden, hidden)
            last = self.op("Add", [last, inner])
            parts.append(last)
        return self.conv(self.op("Concat", parts, axis=1), hidden * len(parts), cout, 1)

    def sppf(self, x: str, channels: int) -> str:
        """YOLO's SPPF: three chained 5x5 max pools, concatenated."""
        hidden = channels // 2
        y = self.conv(x, channels, hidden, 1)
        pools = [y]
        for _ in range(3):
            pools.append(self.op("MaxPool", [pools[-1]], kernel_shape=[5, 5], pads=[2] * 4))
        return self.conv(self.op("Concat", pools, axis=1), 4 * hidden, channels, 1)

    def linear(self, x: str, cin: int, cout: int) -> str:
        """x @ W + b over the last axis."""
        return self.op(
            "Add", [self.op("MatMul", [x, self.weight("w", (cin, cout))]), self.weight("b", (cout,), 0.01)]
        )

    def layer_norm(self, x: str, channels: int) -> str:
        scale = self.const("gamma", np.ones(channels, np.float32))
        bias = self.const("beta", np.zeros(channels, np.float32))
        return self.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=1e-5)

    def mixing_block(self, x: str, length: int, dim: int, heads: int) -> str:
        """A pre-norm transformer block over a (1, length, dim) sequence."""
        head = dim // heads
        y = self.layer_norm(x, dim)
        split = self.const("shape", np.array([1, length, heads, head], np.int64))
        q, k, v = (
            self.op("Transpose", [self.op("Reshape", [self.linear(y, dim, dim), split])], perm=[0, 2, 1, 3])
            for _ in range(3)
        )
        scale = self.const("scale", np.array(1.0 / np.sqrt(head), np.float32))
        scores = self.op("Mul", [self.op("MatMul", [q, self.op("Transpose", [k], perm=[0, 1, 3, 2])]), scale])
        mixed = self.op("MatMul", [self.op("Softmax", [scores], axis=-1), v])
        merge = self.const("shape", np.array([1, length, dim], np.int64))
        mixed = self.op("Reshape", [self.op("Transpose", [mixed], perm=[0, 2, 1, 3]), merge])
        x = self.op("Add", [x, self.linear(mixed, dim, dim)])
        y = self.linear(self.layer_norm(x, dim), dim, 2 * dim)
        y = self.op("Mul", [y, self.op("Sigmoid", [y])])
        return self.op("Add", [x, self.linear(y, 2 * dim, dim)])


def _model(b: Builder, name: str, inputs: list, outputs: list) -> onnx.ModelProto:
    graph = helper.make_graph(b.nodes, name, inputs, outputs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="bench")
    onnx.checker.check_model(model, full_check=True)
    return model


def _image(size: tuple[int, int], name: str = "image") -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 3, *size])


def detector(size: int = 320, classes: int = 20, width: int = 16, seed: int = 11) -> onnx.ModelProto:
    """The YOLO-style detector of the module docstring: 1x3xSxS -> 1x(4+classes)x(cells)."""
    b = ArchBuilder(seed=seed)
    w = [width, 2 * width, 4 * width, 8 * width, 16 * width]
    x = b.conv("image", 3, w[0], stride=2)  # /2
    x = b.conv(x, w[0], w[1], stride=2)  # /4
    x = b.c2f(x, w[1], w[1], 1)
    x = b.conv(x, w[1], w[2], stride=2)  # /8
    p3 = b.c2f(x, w[2], w[2], 2)
    x = b.conv(p3, w[2], w[3], stride=2)  # /16
    p4 = b.c2f(x, w[3], w[3], 2)
    x = b.conv(p4, w[3], w[4], stride=2)  # /32
    p5 = b.sppf(b.c2f(x, w[4], w[4], 1), w[4])
    scales = b.const("scales", np.array([1, 1, 2, 2], np.float32))
    up = b.op("Resize", [p5, "", scales], mode="nearest")
    n4 = b.c2f(b.op("Concat", [up, p4], axis=1), w[4] + w[3], w[3], 1)
    up = b.op("Resize", [n4, "", scales], mode="nearest")
    n3 = b.c2f(b.op("Concat", [up, p3], axis=1), w[3] + w[2], w[2], 1)
    heads = []
    for feature, channels in ((n3, w[2]), (n4, w[3]), (p5, w[4])):
        y = b.conv(b.conv(feature, channels, channels), channels, 4 + classes, 1, act=None)
        shape = b.const("shape", np.array([1, 4 + classes, -1], np.int64))
        heads.append(b.op("Reshape", [y, shape]))
    b.nodes.append(helper.make_node("Concat", heads, ["detections"], name="detections_op", axis=2))
    cells = sum((size // s) ** 2 for s in (8, 16, 32))
    out = helper.make_tensor_value_info("detections", TensorProto.FLOAT, [1, 4 + classes, cells])
    return _model(b, f"detector_{size}_w{width}", [_image((size, size))], [out])


def text_recogniser(
    height: int = 48,
    width: int = 320,
    channels: tuple[int, ...] = (32, 64, 128, 192),
    dim: int = 128,
    blocks: int = 2,
    classes: int = 96,
    seed: int = 12,
) -> onnx.ModelProto:
    """CRNN/SVTR-style: convs pool the height to 1 (width to a quarter), then mixing blocks over the
    width sequence and a per-column classifier: 1x3xHxW -> 1x(W/4)xclasses."""
    b = ArchBuilder(seed=seed)
    x, cin = "image", 3
    for number, cout in enumerate(channels):
        stride = (2, 2) if number < 2 else (2, 1)
        x = b.conv(x, cin, cout, stride=stride, act="relu")
        x = b.conv(x, cout, cout, act="relu")
        cin = cout
    rows = height // 2 ** len(channels)
    if rows > 1:
        x = b.op("ReduceMean", [x], axes=[2], keepdims=0)
    else:
        x = b.op("Squeeze", [x, b.const("axes", np.array([2], np.int64))])
    length = width // 4
    x = b.linear(b.op("Transpose", [x], perm=[0, 2, 1]), cin, dim)
    for _ in range(blocks):
        x = b.mixing_block(x, length, dim, heads=4)
    logits = b.linear(b.layer_norm(x, dim), dim, classes)
    b.nodes.append(helper.make_node("Softmax", [logits], ["characters"], name="characters_op", axis=-1))
    out = helper.make_tensor_value_info("characters", TensorProto.FLOAT, [1, length, classes])
    return _model(b, f"text_recogniser_{height}x{width}", [_image((height, width))], [out])


def text_segmenter(
    size: int = 320, widths: tuple[int, ...] = (16, 32, 64, 128), inner: int = 64, seed: int = 13
) -> onnx.ModelProto:
    """DBNet-style: strided backbone (/4../32), FPN, probability map at full size: 1x3xSxS -> 1x1xSxS."""
    b = ArchBuilder(seed=seed)
    x = b.conv("image", 3, widths[0], stride=2, act="relu")
    features, cin = [], widths[0]
    for cout in widths:
        x = b.conv(x, cin, cout, stride=2, act="relu")
        x = b.conv(x, cout, cout, act="relu")
        features.append(x)
        cin = cout
    laterals = [b.conv(f, c, inner, 1, act=None) for f, c in zip(features, widths, strict=True)]
    scales = b.const("scales", np.array([1, 1, 2, 2], np.float32))
    merged = [laterals[-1]]
    for lateral in reversed(laterals[:-1]):
        merged.insert(0, b.op("Add", [lateral, b.op("Resize", [merged[0], "", scales], mode="nearest")]))
    maps = []
    for level, m in enumerate(merged):
        y = b.conv(m, inner, inner // 4, act=None)
        for _ in range(level):
            y = b.op("Resize", [y, "", scales], mode="nearest")
        maps.append(y)
    y = b.conv(b.op("Concat", maps, axis=1), inner, inner // 4, act="relu")
    for cout in (inner // 4, 1):
        w, bias = b.weight("up_w", (inner // 4, cout, 2, 2)), b.weight("up_b", (cout,), 0.01)
        y = b.op("ConvTranspose", [y, w, bias], kernel_shape=[2, 2], strides=[2, 2])
        if cout != 1:
            y = b.op("Relu", [y])
    b.nodes.append(helper.make_node("Sigmoid", [y], ["probability"], name="probability_op"))
    out = helper.make_tensor_value_info("probability", TensorProto.FLOAT, [1, 1, size, size])
    return _model(b, f"text_segmenter_{size}", [_image((size, size))], [out])


def mobile_classifier(
    size: int = 160, alpha: float = 0.75, classes: int = 1000, seed: int = 14
) -> onnx.ModelProto:
    """MobileNetV1-style: depthwise-separable blocks with ReLU: 1x3xSxS -> 1xclasses probabilities."""
    b = ArchBuilder(seed=seed)
    plan = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1)]
    cin = int(32 * alpha)
    x = b.conv("image", 3, cin, stride=2, act="relu")
    for channels, stride in plan:
        cout = int(channels * alpha)
        x = b.conv(x, cin, cin, stride=stride, act="relu", groups=cin)
        x = b.conv(x, cin, cout, 1, act="relu")
        cin = cout
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])], axis=1)
    logits = b.op("Gemm", [x, b.weight("fc_w", (classes, cin)), b.weight("fc_b", (classes,), 0.01)], transB=1)
    b.nodes.append(helper.make_node("Softmax", [logits], ["probabilities"], name="probabilities_op", axis=1))
    out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, classes])
    return _model(b, f"mobile_classifier_{size}", [_image((size, size))], [out])
