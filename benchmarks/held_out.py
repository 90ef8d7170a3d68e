"""Models the benchmarks hold out from every tuning database: architectures users deploy, built here with
random (seeded) weights, never tuned into the shipped examples.

    python benchmarks/held_out.py OUT_DIR       # writes small_detector.onnx

* small_detector: a YOLO-style detector at 320x320 (1x3x320x320 -> 1x(4+20)x2100): Conv + SiLU stems with
  stride 2, C2f-style blocks (split, bottlenecks, concat), an SPPF block (three chained 5x5 max pools), an
  upsample + concat neck and 1x1 heads at strides 8, 16 and 32, flattened and concatenated.
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


class _Builder(Builder):
    """examples/build_models.py's builder, with the blocks of a YOLO-style detector."""

    def ops(self, op_type: str, inputs: list[str], count: int, **attrs: object) -> list[str]:
        """A node with `count` outputs."""
        outs = [self.name(op_type.lower()) for _ in range(count)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=f"{outs[0]}_op", **attrs))
        return outs

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, act: bool = True) -> str:
        w, b = self.weight("w", (cout, cin, k, k)), self.weight("b", (cout,), scale=0.01)
        y = self.op("Conv", [x, w, b], kernel_shape=[k, k], strides=[stride] * 2, pads=[k // 2] * 4)
        return self.op("Mul", [y, self.op("Sigmoid", [y])]) if act else y  # SiLU

    def c2f(self, x: str, cin: int, cout: int, blocks: int) -> str:
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
        hidden = channels // 2
        y = self.conv(x, channels, hidden, 1)
        pools = [y]
        for _ in range(3):
            pools.append(self.op("MaxPool", [pools[-1]], kernel_shape=[5, 5], pads=[2] * 4))
        return self.conv(self.op("Concat", pools, axis=1), 4 * hidden, channels, 1)


def small_detector(size: int = 320, classes: int = 20, width: int = 16) -> onnx.ModelProto:
    """The YOLO-style detector described in the module docstring."""
    b = _Builder(seed=11)
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
        y = b.conv(b.conv(feature, channels, channels), channels, 4 + classes, 1, act=False)
        shape = b.const("shape", np.array([1, 4 + classes, -1], np.int64))
        heads.append(b.op("Reshape", [y, shape]))
    b.nodes.append(helper.make_node("Concat", heads, ["detections"], name="detections_op", axis=2))
    cells = sum((size // s) ** 2 for s in (8, 16, 32))
    graph = helper.make_graph(
        b.nodes,
        "small_detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, [1, 4 + classes, cells])],
        b.inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="bench")


MODELS = {"small_detector": small_detector}


def write(name: str, folder: Path) -> Path:
    """Build the held-out model `name` into `folder` (checked by onnx) and return its path."""
    model = MODELS[name]()
    onnx.checker.check_model(model, full_check=True)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.onnx"
    onnx.save(model, path)
    return path


if __name__ == "__main__":
    for model_name in MODELS:
        print(write(model_name, Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
