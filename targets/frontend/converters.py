"""TVM's Relax ONNX importer with the project's own converters for ops it lacks.

TVM 0.27's `from_onnx` has no parameter for extra converters; its importer class looks converters up in
two methods (the unsupported-op check and the conversion itself). `ProjectImporter` extends exactly
those two: an op the project converts itself goes to its converter, everything else to TVM's table, so
TVM's installed code is used as it is. Converters take (block builder, inputs, attributes, opset) and
return a Relax expression (a Tuple for several outputs); inputs missing in the node are None.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import onnx

Converter = Callable[[Any, list[Any], dict[str, Any], int], Any]


def own_converters() -> dict[str, Converter]:
    """The project's converters by ONNX op type."""
    from nndeploy.targets.frontend import recurrent as tvm_recurrent

    return {
        "CumProd": _cumprod,
        "LpNormalization": _lp_normalization,
        "Softplus": _softplus,
        "Mish": _mish,
        "LSTM": tvm_recurrent.lstm,
        "GRU": tvm_recurrent.gru,
        "RNN": tvm_recurrent.rnn,
    }


def from_onnx(model: onnx.ModelProto, shape_dict: dict[str, list[int]], dtype_dict: dict[str, str]) -> Any:
    """The model as a Relax IRModule, imported by TVM's importer extended with `own_converters`
    (parameters folded in as constants, as nndeploy builds always do)."""
    from tvm.relax.frontend.onnx import onnx_frontend

    converters = own_converters()

    class ProjectImporter(onnx_frontend.ONNXGraphImporter):
        def _check_for_unsupported_ops(self, graph: onnx.GraphProto) -> None:
            known = set(onnx_frontend._get_convert_map()) | set(converters) | {"If", "Constant"}
            missing = sorted({node.op_type for node in graph.node} - known)
            if missing:
                import tvm

                raise tvm.error.OpNotImplemented(
                    "The following operators are not supported for frontend ONNX: " + ", ".join(missing)
                )

        def _convert_operator(self, op_name: str, inputs: Any, attrs: dict, opset: int) -> Any:
            if op_name not in converters:
                return super()._convert_operator(op_name, inputs, attrs, opset)
            result = converters[op_name](self.bb, list(inputs), attrs, opset)
            return self.bb.normalize(result)

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    importer = ProjectImporter(shape_dict, dtype_dict, keep_params_in_input=False, sanitize=True)
    return importer.from_onnx(model.graph, opset)


def constant_int(expr: Any, what: str) -> int:
    """The integer value of a constant input (axis, count, ...); ValueError when it comes at run time."""
    import tvm

    if isinstance(expr, tvm.ir.GenericConst):
        return int(expr.value.numpy().reshape(-1)[0])
    raise ValueError(f"{what} must be a constant, not a run-time input")


def _cumprod(bb: Any, inputs: list[Any], attrs: dict[str, Any], opset: int) -> Any:
    """CumProd (opset 26): cumulative product along a constant axis, exclusive and/or reversed."""
    from tvm import relax, topi

    data = inputs[0]
    axis = constant_int(inputs[1], "CumProd's axis")
    reverse = attrs.get("reverse", 0) != 0
    if reverse:
        data = bb.emit_te(topi.flip, data, axis=axis)
    data = bb.normalize(relax.op.cumprod(data, axis, exclusive=attrs.get("exclusive", 0) != 0))
    if reverse:
        data = bb.emit_te(topi.flip, data, axis=axis)
    return data


def _lp_normalization(bb: Any, inputs: list[Any], attrs: dict[str, Any], opset: int) -> Any:
    """LpNormalization: x / ||x||_p along `axis` (p 1 or 2); a zero norm leaves the zeros as they are."""
    from tvm import relax

    data = inputs[0]
    axis, p = int(attrs.get("axis", -1)), int(attrs.get("p", 2))
    if p == 1:
        norm = relax.op.sum(relax.op.abs(data), axis=[axis], keepdims=True)
    elif p == 2:
        norm = relax.op.sqrt(relax.op.sum(relax.op.multiply(data, data), axis=[axis], keepdims=True))
    else:
        raise ValueError(f"LpNormalization with p={p}: only p=1 and p=2 are defined")
    norm = bb.emit(norm)
    zero = relax.const(0, data.ty.dtype)
    safe = bb.emit(relax.op.where(relax.op.equal(norm, zero), relax.const(1, data.ty.dtype), norm))
    return relax.op.divide(data, safe)


def _softplus(bb: Any, inputs: list[Any], attrs: dict[str, Any], opset: int) -> Any:
    """log(1 + exp(x)) as max(x, 0) + log1p(exp(-|x|)), log1p by Kahan's u = 1 + y; log(u) * y / (u - 1):
    TVM's own converter takes log(1 + y) directly, which loses every digit once exp(-|x|) is below
    float32's epsilon (x = -17 gives 0 instead of 4e-8), and Mish multiplies that error by x."""
    from tvm import relax

    x = inputs[0]
    dtype = x.ty.dtype
    one = relax.const(1, dtype)
    small = bb.emit(relax.op.exp(relax.op.negative(relax.op.abs(x))))
    u = bb.emit(relax.op.add(one, small))
    log1p = relax.op.where(
        relax.op.equal(u, one),
        small,
        relax.op.divide(relax.op.multiply(relax.op.log(u), small), relax.op.subtract(u, one)),
    )
    return relax.op.add(relax.op.maximum(x, relax.const(0, dtype)), log1p)


def _mish(bb: Any, inputs: list[Any], attrs: dict[str, Any], opset: int) -> Any:
    """x * tanh(softplus(x)), with the precise softplus above, and tanh(s) as s - s^3 / 3 for s < 0.01
    (relative error under 2e-9 there): TVM's tanh keeps few digits below 1e-3 and none below 1e-8."""
    from tvm import relax

    x = inputs[0]
    dtype = x.ty.dtype
    s = bb.emit(_softplus(bb, inputs, attrs, opset))
    series = relax.op.subtract(
        s, relax.op.divide(relax.op.multiply(relax.op.multiply(s, s), s), relax.const(3, dtype))
    )
    tanh = relax.op.where(relax.op.less(s, relax.const(0.01, dtype)), series, relax.op.tanh(s))
    return relax.op.multiply(x, tanh)
