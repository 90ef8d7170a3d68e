"""Build the example models shipped in examples/models/ (deterministic, no network, onnx + numpy only).

    python examples/build_models.py            # rewrites examples/models/*.onnx

* camera_cnn.onnx: a MobileNetV2-style image classifier (1x3x224x224 -> 1x1000): inverted residual blocks
  with depthwise convolutions, batch norm folded into the convolutions, ReLU6 (Clip), global pooling, Gemm.
* small_unet.onnx: a U-Net-style segmenter (1x3x128x128 -> 1x2x128x128): three conv-conv-maxpool levels,
  a bottleneck, and nearest-neighbour upsampling with skip concatenations back up.
* tiny_bert.onnx: a 4-layer transformer encoder (batch and sequence length symbolic) with multi-head
  attention written as MatMul/Softmax, LayerNormalization and GELU (Erf); needs --input-shape.
Weights are random (seeded): these models exist to be planned, split and compiled, not to classify.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).parent / "models"
OPSET = 17


class Builder:
    """Collects nodes and initializers with unique names."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def weight(self, stem: str, shape: tuple[int, ...], scale: float | None = None) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        std = scale if scale is not None else (2.0 / max(fan_in, 1)) ** 0.5
        name = self.name(stem)
        data = (self.rng.standard_normal(shape) * std).astype(np.float32)
        self.inits.append(numpy_helper.from_array(data, name))
        return name

    def const(self, stem: str, value: np.ndarray) -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], stem: str | None = None, **attrs: object) -> str:
        out = self.name(stem or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{out}_op", **attrs))
        return out


def conv(
    b: Builder, x: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True
) -> str:
    w = b.weight("conv_w", (cout, cin // groups, k, k))
    bias = b.weight("conv_b", (cout,), scale=0.01)
    y = b.op(
        "Conv",
        [x, w, bias],
        "conv",
        kernel_shape=[k, k],
        strides=[stride, stride],
        pads=[k // 2] * 4,
        group=groups,
    )
    if act:
        y = b.op(
            "Clip",
            [y, b.const("zero", np.array(0.0, np.float32)), b.const("six", np.array(6.0, np.float32))],
            "relu6",
        )
    return y


def camera_cnn() -> onnx.ModelProto:
    b = Builder(seed=1)
    x = conv(b, "image", 3, 32, 3, stride=2)
    cin = 32
    # (expansion, out channels, repeats, first stride): a slimmed MobileNetV2 schedule.
    for t, c, n, s in [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 3, 2),
        (6, 96, 2, 1),
        (6, 160, 2, 2),
    ]:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = conv(b, x, cin, hidden, 1) if t != 1 else x
            y = conv(b, y, hidden, hidden, 3, stride=stride, groups=hidden)
            y = conv(b, y, hidden, c, 1, act=False)
            x = b.op("Add", [x, y], "residual") if stride == 1 and cin == c else y
            cin = c
    x = conv(b, x, cin, 640, 1)
    x = b.op("GlobalAveragePool", [x], "pool")
    x = b.op("Flatten", [x], "flatten", axis=1)
    logits = b.op(
        "Gemm", [x, b.weight("fc_w", (1000, 640)), b.weight("fc_b", (1000,), 0.01)], "logits", transB=1
    )
    b.nodes.append(helper.make_node("Softmax", [logits], ["probabilities"], name="softmax", axis=1))
    graph = helper.make_graph(
        b.nodes,
        "camera_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 1000])],
        b.inits,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="nndeploy-examples"
    )


def small_unet(size: int = 128, widths: tuple[int, ...] = (16, 32, 64, 128)) -> onnx.ModelProto:
    """A U-Net-style segmenter: conv-conv-pool encoder, upsample-concat-conv-conv decoder."""
    b = Builder(seed=3)

    def double_conv(x: str, cin: int, cout: int) -> str:
        for c_in in (cin, cout):
            w, bias = b.weight("conv_w", (cout, c_in, 3, 3)), b.weight("conv_b", (cout,), 0.01)
            x = b.op("Relu", [b.op("Conv", [x, w, bias], "conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])])
        return x

    x, cin, skips = "image", 3, []
    for width in widths[:-1]:
        x = double_conv(x, cin, width)
        skips.append((x, width))
        x = b.op("MaxPool", [x], "pool", kernel_shape=[2, 2], strides=[2, 2])
        cin = width
    x = double_conv(x, cin, widths[-1])
    cin = widths[-1]
    scales = b.const("scales", np.array([1, 1, 2, 2], np.float32))
    for skip, width in reversed(skips):
        up = b.op("Resize", [x, "", scales], "upsample", mode="nearest")
        x = double_conv(b.op("Concat", [up, skip], "concat", axis=1), cin + width, width)
        cin = width
    head_w, head_b = b.weight("head_w", (2, cin, 1, 1)), b.weight("head_b", (2,), 0.01)
    b.nodes.append(helper.make_node("Conv", [x, head_w, head_b], ["mask_logits"], name="head"))
    graph = helper.make_graph(
        b.nodes,
        "small_unet",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("mask_logits", TensorProto.FLOAT, [1, 2, size, size])],
        b.inits,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="nndeploy-examples"
    )


def tiny_bert(
    layers: int = 4, hidden: int = 256, heads: int = 4, ffn: int = 1024, vocab: int = 8000
) -> onnx.ModelProto:
    b = Builder(seed=2)
    head = hidden // heads
    table = b.weight("embedding", (vocab, hidden), scale=0.02)
    x = b.op("Gather", [table, "input_ids"], "embed", axis=0)
    split_shape = b.const("split_shape", np.array([0, 0, heads, head], np.int64))
    merge_shape = b.const("merge_shape", np.array([0, 0, hidden], np.int64))
    scale = b.const("scale", np.array(1.0 / np.sqrt(head), np.float32))
    mask_bias = b.op(
        "Mul",
        [
            b.op(
                "Sub",
                [
                    b.const("one", np.array(1.0, np.float32)),
                    b.op("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT),
                ],
            ),
            b.const("neg", np.array(-1e4, np.float32)),
        ],
        "mask_bias",
    )
    mask_bias = b.op("Unsqueeze", [mask_bias, b.const("axes", np.array([1, 2], np.int64))], "mask_4d")
    for _ in range(layers):

        def heads_of(t: str) -> str:
            return b.op(
                "Transpose", [b.op("Reshape", [t, split_shape], "split_heads")], "heads", perm=[0, 2, 1, 3]
            )

        q, k, v = (
            heads_of(
                b.op(
                    "Add",
                    [
                        b.op("MatMul", [x, b.weight(f"w{n}", (hidden, hidden))], f"{n}_proj"),
                        b.weight(f"b{n}", (hidden,), 0.01),
                    ],
                    n,
                )
            )
            for n in "qkv"
        )
        kt = b.op("Transpose", [k], "k_t", perm=[0, 1, 3, 2])
        scores = b.op(
            "Add", [b.op("Mul", [b.op("MatMul", [q, kt], "scores"), scale], "scaled"), mask_bias], "masked"
        )
        probs = b.op("Softmax", [scores], "probs", axis=-1)
        ctx = b.op("Transpose", [b.op("MatMul", [probs, v], "context")], "ctx_t", perm=[0, 2, 1, 3])
        ctx = b.op("Reshape", [ctx, merge_shape], "merge_heads")
        attn = b.op(
            "Add",
            [
                b.op("MatMul", [ctx, b.weight("wo", (hidden, hidden))], "o_proj"),
                b.weight("bo", (hidden,), 0.01),
            ],
            "attn_out",
        )
        x = b.op(
            "LayerNormalization",
            [
                b.op("Add", [x, attn], "res1"),
                b.weight("ln1_g", (hidden,), 0.0),
                b.weight("ln1_b", (hidden,), 0.0),
            ],
            "ln1",
            axis=-1,
            epsilon=1e-5,
        )
        h = b.op(
            "Add",
            [b.op("MatMul", [x, b.weight("w1", (hidden, ffn))], "ffn_in"), b.weight("b1", (ffn,), 0.01)],
            "ffn_b",
        )
        gelu = b.op(
            "Mul",
            [
                b.op("Mul", [h, b.const("half", np.array(0.5, np.float32))], "half_h"),
                b.op(
                    "Add",
                    [
                        b.op(
                            "Erf",
                            [b.op("Div", [h, b.const("sqrt2", np.array(np.sqrt(2), np.float32))], "h_s")],
                            "erf",
                        ),
                        b.const("one", np.array(1.0, np.float32)),
                    ],
                    "erf_1",
                ),
            ],
            "gelu",
        )
        f = b.op(
            "Add",
            [
                b.op("MatMul", [gelu, b.weight("w2", (ffn, hidden))], "ffn_out"),
                b.weight("b2", (hidden,), 0.01),
            ],
            "ffn",
        )
        x = b.op(
            "LayerNormalization",
            [
                b.op("Add", [x, f], "res2"),
                b.weight("ln2_g", (hidden,), 0.0),
                b.weight("ln2_b", (hidden,), 0.0),
            ],
            "ln2",
            axis=-1,
            epsilon=1e-5,
        )
    b.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="output"))
    # LayerNorm scales were drawn with std 0: make them 1 so activations stay well scaled.
    for init in b.inits:
        if init.name.startswith("ln") and "_g_" in init.name:
            init.CopyFrom(numpy_helper.from_array(np.ones(hidden, np.float32), init.name))
    graph = helper.make_graph(
        b.nodes,
        "tiny_bert",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [
            helper.make_tensor_value_info(
                "last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", hidden]
            )
        ],
        b.inits,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="nndeploy-examples"
    )


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    for name, model in (
        ("camera_cnn", camera_cnn()),
        ("tiny_bert", tiny_bert()),
        ("small_unet", small_unet()),
    ):
        onnx.checker.check_model(model, full_check=True)
        path = HERE / f"{name}.onnx"
        onnx.save(model, path)
        print(f"{path}: {len(model.graph.node)} nodes, {path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
