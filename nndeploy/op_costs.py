"""Per-operator cost features: FLOPs (multiply and add counted separately) and bytes moved, from static
tensor shapes. Ops the table does not know get a conservative estimate marked `known=False`.

Bytes: `bytes_read` is the sum of the node's distinct input tensors (activations and weights) and
`bytes_written` the sum of its outputs, except for pure views (Reshape, Flatten, Squeeze, Unsqueeze,
Identity, Dropout in inference), which move nothing, and gathers/slices, which read about as much of their
data input as they write (plus the index tensors).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import onnx

from nndeploy.types import TensorSpec


@dataclass(frozen=True)
class OpCost:
    """Cost features of one node. `known` is False when the op is not in the cost table (a guess)."""

    flops: float
    bytes_read: int
    bytes_written: int
    known: bool = True


KNOWN_DOMAINS = ("", "ai.onnx")
VIEW_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"})
GATHER_LIKE_OPS = frozenset({"Slice", "Gather", "GatherND", "GatherElements", "Compress"})
ZERO_FLOP_OPS = frozenset(
    {
        *VIEW_OPS,
        *GATHER_LIKE_OPS,
        "Shape",
        "Size",
        "Transpose",
        "Expand",
        "Concat",
        "Split",
        "Pad",
        "Tile",
        "ScatterND",
        "ScatterElements",
        "Scatter",
        "DepthToSpace",
        "SpaceToDepth",
        "Constant",
        "ConstantOfShape",
        "EyeLike",
        "Trilu",
        "OneHot",
        "ReverseSequence",
        "Range",
        "SplitToSequence",
        "ConcatFromSequence",
        "SequenceAt",
        "SequenceConstruct",
        "SequenceEmpty",
        "SequenceInsert",
        "SequenceLength",
        "CenterCropPad",
        "Optional",
        "OptionalGetElement",
        "OptionalHasElement",
    }
)
# FLOPs per output element of elementwise ops (transcendental functions cost a few).
ELEMENTWISE_FLOPS: dict[str, float] = {
    **dict.fromkeys(
        [
            "Add",
            "Sub",
            "Mul",
            "Div",
            "Neg",
            "Abs",
            "Relu",
            "Max",
            "Min",
            "Sign",
            "Floor",
            "Ceil",
            "Round",
            "Reciprocal",
            "Equal",
            "Less",
            "LessOrEqual",
            "Greater",
            "GreaterOrEqual",
            "And",
            "Or",
            "Xor",
            "Not",
            "Where",
            "Cast",
            "CastLike",
            "Mod",
            "BitShift",
            "BitwiseAnd",
            "BitwiseOr",
            "BitwiseXor",
            "BitwiseNot",
            "IsNaN",
            "IsInf",
            "ThresholdedRelu",
            "PRelu",
            "LeakyRelu",
        ],
        1.0,
    ),
    **dict.fromkeys(["Clip", "Elu", "Selu", "Celu", "Shrink", "DequantizeLinear"], 2.0),
    **dict.fromkeys(["HardSigmoid", "QuantizeLinear", "Softsign"], 3.0),
    **dict.fromkeys(["Exp", "Log", "Sqrt", "Pow", "Sin", "Cos", "HardSwish", "Erf"], 4.0),
    **dict.fromkeys(["Sigmoid", "Tanh", "Softplus", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh"], 4.0),
    **dict.fromkeys(["Asinh", "Acosh", "Atanh", "DynamicQuantizeLinear"], 6.0),
    **dict.fromkeys(["Gelu", "Mish", "Swish", "FastGelu", "QuickGelu"], 8.0),
}
VARIADIC_OPS = frozenset({"Sum", "Max", "Min", "Mean"})
# FLOPs per input element of normalisations and reductions.
PER_INPUT_FLOPS: dict[str, float] = {
    "BatchNormalization": 2.0,
    "InstanceNormalization": 7.0,
    "LayerNormalization": 7.0,
    "GroupNormalization": 7.0,
    "MeanVarianceNormalization": 5.0,
    "LpNormalization": 3.0,
    "SimplifiedLayerNormalization": 5.0,
    "Softmax": 5.0,
    "LogSoftmax": 5.0,
    "Hardmax": 1.0,
    "ReduceSum": 1.0,
    "ReduceMean": 1.0,
    "ReduceMax": 1.0,
    "ReduceMin": 1.0,
    "ReduceProd": 1.0,
    "ReduceL1": 2.0,
    "ReduceL2": 2.0,
    "ReduceSumSquare": 2.0,
    "ReduceLogSum": 2.0,
    "ReduceLogSumExp": 3.0,
    "ArgMax": 1.0,
    "ArgMin": 1.0,
    "CumSum": 1.0,
    "NonZero": 1.0,
    "GlobalAveragePool": 1.0,
    "GlobalMaxPool": 1.0,
    "GlobalLpPool": 3.0,
}

Specs = Sequence[TensorSpec | None]


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _numel(spec: TensorSpec | None) -> int:
    return spec.numel if spec is not None else 0


def _at(specs: Specs, i: int) -> TensorSpec | None:
    return specs[i] if i < len(specs) else None


def _conv(node: onnx.NodeProto, ins: Specs, outs: Specs) -> float:
    w_index, b_index = (3, 8) if node.op_type == "QLinearConv" else (1, 2)
    w, out = _at(ins, w_index), _at(outs, 0)
    if w is None or out is None or len(w.shape) < 2:
        raise _Unknown
    macs_per_out = w.shape[1] * math.prod(w.shape[2:])  # (C / groups) x kernel
    return 2.0 * out.numel * macs_per_out + (out.numel if _at(ins, b_index) is not None else 0)


def _conv_transpose(node: onnx.NodeProto, ins: Specs, outs: Specs) -> float:
    x, w, out = _at(ins, 0), _at(ins, 1), _at(outs, 0)
    if x is None or w is None or out is None or len(w.shape) < 2:
        raise _Unknown
    # Every input element is scattered through its group's (M / groups) x kernel outputs.
    macs = x.numel * w.shape[1] * math.prod(w.shape[2:])
    return 2.0 * macs + (out.numel if _at(ins, 2) is not None else 0)


def _matmul(node: onnx.NodeProto, ins: Specs, outs: Specs) -> float:
    a = _at(ins, 0)
    out = _at(outs, 0)
    if a is None or out is None or not a.shape:
        raise _Unknown
    return 2.0 * out.numel * a.shape[-1]


def _gemm(node: onnx.NodeProto, ins: Specs, outs: Specs) -> float:
    a, out = _at(ins, 0), _at(outs, 0)
    if a is None or out is None or len(a.shape) != 2:
        raise _Unknown
    k = a.shape[0] if _attr(node, "transA", 0) else a.shape[1]
    extra = out.numel if _at(ins, 2) is not None and _attr(node, "beta", 1.0) != 0 else 0
    return 2.0 * out.numel * k + extra


def _einsum(node: onnx.NodeProto, ins: Specs, outs: Specs) -> float:
    """2 x the product of every index's size (exact for contractions; a bound otherwise)."""
    terms = str(_attr(node, "equation", "")).replace(" ", "").split("->")[0].split(",")
    if len(terms) != len(ins) or any(s is None for s in ins):
        raise _Unknown
    sizes: dict[str, int] = {}
    ellipsis: list[int] = []
    for term, spec in zip(terms, ins, strict=True):
        shape = list(spec.shape)  # type: ignore[union-attr]
        if "..." in term:
            head, tail = term.split("...")
            n_ell = len(shape) - len(head) - len(tail)
            ell = shape[len(head) : len(head) + n_ell]
            shape = shape[: len(head)] + shape[len(head) + n_ell :]
            term = head + tail
            width = max(len(ellipsis), len(ell))
            ellipsis = [1] * (width - len(ellipsis)) + ellipsis
            ell = [1] * (width - len(ell)) + ell
            ellipsis = [max(p, q) for p, q in zip(ellipsis, ell, strict=True)]
        if len(term) != len(shape):
            raise _Unknown
        for letter, dim in zip(term, shape, strict=True):
            sizes[letter] = max(sizes.get(letter, 1), dim)
    work = math.prod(sizes.values()) * math.prod(ellipsis)
    return float(work) * (2.0 if len(ins) > 1 else 1.0)


def _pool(node: onnx.NodeProto, ins: Specs, outs: Specs) -> float:
    out = _at(outs, 0)
    kernel = _attr(node, "kernel_shape")
    if out is None or not kernel:
        raise _Unknown
    window = math.prod(kernel)
    if node.op_type == "MaxPool":
        return float(out.numel * window)
    if node.op_type == "LpPool":
        return float(out.numel * (2 * window + 1))
    return float(out.numel * (window + 1))  # AveragePool: sums then one divide


def _lrn(node: onnx.NodeProto, ins: Specs, outs: Specs) -> float:
    return float(_numel(_at(outs, 0)) * (2 * int(_attr(node, "size", 1)) + 3))


def _resize(node: onnx.NodeProto, ins: Specs, outs: Specs) -> float:
    x, out = _at(ins, 0), _at(outs, 0)
    if out is None:
        raise _Unknown
    mode = str(_attr(node, "mode", "nearest")).lower()
    changed = 2
    if x is not None and len(x.shape) == len(out.shape):
        changed = max(1, sum(1 for p, q in zip(x.shape, out.shape, strict=True) if p != q))
    if "cubic" in mode:
        per_out = 2.0 * 4**changed
    elif "linear" in mode:
        per_out = 2.0 * 2**changed
    else:
        per_out = 1.0
    return per_out * out.numel


def _topk(node: onnx.NodeProto, ins: Specs, outs: Specs) -> float:
    x, out = _at(ins, 0), _at(outs, 0)
    if x is None or out is None or not out.shape:
        raise _Unknown
    k = out.shape[int(_attr(node, "axis", -1))]
    return float(x.numel * max(1.0, math.log2(max(k, 2))))


def _nms(node: onnx.NodeProto, ins: Specs, outs: Specs) -> float:
    """Every pair of boxes per batch and class (about 10 FLOPs per IoU test): an upper bound."""
    boxes, scores = _at(ins, 0), _at(ins, 1)
    if boxes is None or scores is None or len(boxes.shape) != 3 or len(scores.shape) != 3:
        raise _Unknown
    batch, classes, n = scores.shape
    return float(batch * classes * (n * n * 5 + n * max(1.0, math.log2(max(n, 2)))))


def _rnn(node: onnx.NodeProto, ins: Specs, outs: Specs) -> float:
    x, w, r = _at(ins, 0), _at(ins, 1), _at(ins, 2)
    if x is None or w is None or r is None or len(w.shape) != 3 or len(x.shape) != 3:
        raise _Unknown
    steps = x.numel // max(x.shape[2], 1)  # seq_len x batch
    dirs, gates_h, in_size = w.shape
    hidden = r.shape[2]
    pointwise = {"LSTM": 10, "GRU": 10, "RNN": 2}[node.op_type]
    return float(steps * dirs * (2 * gates_h * (in_size + hidden) + pointwise * hidden))


def _variadic(node: onnx.NodeProto, ins: Specs, outs: Specs) -> float:
    n = len(ins)
    return float(_numel(_at(outs, 0)) * (max(n - 1, 0) + (1 if node.op_type == "Mean" else 0)))


class _Unknown(Exception):
    """A known op whose shapes are missing: fall back to the conservative estimate."""


_HANDLERS: dict[str, Callable[[onnx.NodeProto, Specs, Specs], float]] = {
    "Conv": _conv,
    "ConvInteger": _conv,
    "QLinearConv": _conv,
    "ConvTranspose": _conv_transpose,
    "MatMul": _matmul,
    "MatMulInteger": _matmul,
    "QLinearMatMul": _matmul,
    "Gemm": _gemm,
    "Einsum": _einsum,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "LpPool": _pool,
    "LRN": _lrn,
    "Resize": _resize,
    "Upsample": _resize,
    "TopK": _topk,
    "NonMaxSuppression": _nms,
    "LSTM": _rnn,
    "GRU": _rnn,
    "RNN": _rnn,
    **dict.fromkeys(VARIADIC_OPS, _variadic),
}


def conservative_flops(ins: Specs, outs: Specs) -> float:
    """The estimate used for an op the table does not know: 8 x (input + output elements)."""
    return 8.0 * (sum(_numel(s) for s in ins) + sum(_numel(s) for s in outs))


def node_cost(
    node: onnx.NodeProto, tensors: Mapping[str, TensorSpec], params: Mapping[str, TensorSpec]
) -> OpCost:
    """FLOPs and bytes of one node, given the specs of activation tensors and of weights (initializers).

    Optional inputs left empty keep their position (as None) so ops can find e.g. a Conv bias."""
    ins = [(tensors.get(n) or params.get(n)) if n else None for n in node.input]
    outs = [tensors.get(n) if n else None for n in node.output]
    distinct_in = {n: s for n, s in zip(node.input, ins, strict=True) if n and s is not None}
    read = sum(s.nbytes for s in distinct_in.values())
    written = sum(s.nbytes for s in outs if s is not None)
    op = node.op_type
    present = [s for s in ins if s is not None]
    if node.domain not in KNOWN_DOMAINS:
        return OpCost(conservative_flops(present, outs), read, written, known=False)
    if op in VIEW_OPS:
        return OpCost(0.0, 0, 0)
    if op in ("Shape", "Size"):
        return OpCost(0.0, 0, written)
    if op in GATHER_LIKE_OPS:
        indices = sum(s.nbytes for n, s in distinct_in.items() if n != node.input[0])
        return OpCost(0.0, written + indices, written)
    try:
        if op in _HANDLERS:
            return OpCost(_HANDLERS[op](node, ins, outs), read, written)
    except _Unknown:
        return OpCost(conservative_flops(present, outs), read, written, known=False)
    if op in ZERO_FLOP_OPS:
        return OpCost(0.0, read, written)
    if op in ELEMENTWISE_FLOPS:
        return OpCost(ELEMENTWISE_FLOPS[op] * _numel(_at(outs, 0)), read, written)
    if op in PER_INPUT_FLOPS:
        return OpCost(PER_INPUT_FLOPS[op] * _numel(_at(ins, 0)), read, written)
    return OpCost(conservative_flops(present, outs), read, written, known=False)
