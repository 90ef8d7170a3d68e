"""The project's converters for ONNX's recurrent ops (LSTM, GRU, RNN) into Relax, unrolled over the
sequence (its length is static in every nndeploy build).

Each direction projects the whole input sequence through W once (one matmul), then steps through time
with the recurrence on R, as the ONNX operator definitions write it: gate order iofc for LSTM, zrh for
GRU, activations from the `activations` attribute (defaults Sigmoid/Tanh/Tanh), optional biases,
initial states, LSTM peepholes, `clip`, `layout` 0 or 1, and forward, reverse or bidirectional.
`sequence_lens` is accepted only when every sequence has the full length.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}


def lstm(bb: Any, inputs: list[Any], attrs: dict[str, Any], opset: int) -> Any:
    """ONNX LSTM: outputs (Y, Y_h, Y_c)."""
    if attrs.get("input_forget", 0):
        raise ValueError("LSTM with input_forget=1 is not supported")
    return _recurrent(bb, inputs, attrs, "LSTM")


def gru(bb: Any, inputs: list[Any], attrs: dict[str, Any], opset: int) -> Any:
    """ONNX GRU: outputs (Y, Y_h)."""
    return _recurrent(bb, inputs, attrs, "GRU")


def rnn(bb: Any, inputs: list[Any], attrs: dict[str, Any], opset: int) -> Any:
    """ONNX RNN: outputs (Y, Y_h)."""
    return _recurrent(bb, inputs, attrs, "RNN")


def _recurrent(bb: Any, inputs: list[Any], attrs: dict[str, Any], kind: str) -> Any:
    from tvm import relax

    op = relax.op
    x, w, r = inputs[0], inputs[1], inputs[2]
    padded = [*inputs, *[None] * 8]
    bias, lengths, initial_h = padded[3], padded[4], padded[5]
    initial_c, peepholes = (padded[6], padded[7]) if kind == "LSTM" else (None, None)
    layout = int(attrs.get("layout", 0))
    if layout:  # batch first: to [seq, batch, input] and states to [directions, batch, hidden]
        x = bb.emit(op.permute_dims(x, [1, 0, 2]))
        initial_h = bb.emit(op.permute_dims(initial_h, [1, 0, 2])) if initial_h is not None else None
        initial_c = bb.emit(op.permute_dims(initial_c, [1, 0, 2])) if initial_c is not None else None
    seq, batch = (int(d) for d in x.ty.shape.values[:2])
    hidden = int(attrs["hidden_size"]) if "hidden_size" in attrs else int(r.ty.shape.values[-1])
    _check_full_lengths(lengths, seq)
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else str(direction)
    directions = 2 if direction == "bidirectional" else 1
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind]
    dtype = x.ty.dtype
    activations = _activations(attrs, kind, directions, dtype)
    clip = attrs.get("clip")

    ys, hs, cs = [], [], []
    for d in range(directions):
        reverse = direction == "reverse" or d == 1
        w_d = bb.emit(op.squeeze(op.strided_slice(w, [0], [d], [d + 1]), [0]))  # [gates*h, input]
        r_d = bb.emit(op.squeeze(op.strided_slice(r, [0], [d], [d + 1]), [0]))  # [gates*h, h]
        r_t = bb.emit(op.permute_dims(r_d, [1, 0]))
        projected = bb.emit(op.matmul(x, op.permute_dims(w_d, [1, 0])))  # [seq, batch, gates*h]
        w_bias = r_bias = None
        if bias is not None:
            b_d = bb.emit(op.squeeze(op.strided_slice(bias, [0], [d], [d + 1]), [0]))
            w_bias = bb.emit(op.strided_slice(b_d, [0], [0], [gates * hidden]))
            r_bias = bb.emit(op.strided_slice(b_d, [0], [gates * hidden], [2 * gates * hidden]))
            if kind != "GRU":  # GRU keeps Rb apart for linear_before_reset
                projected = bb.emit(op.add(projected, op.add(w_bias, r_bias)))
            else:
                projected = bb.emit(op.add(projected, w_bias))
        h = _state(bb, initial_h, d, batch, hidden, dtype)
        c = _state(bb, initial_c, d, batch, hidden, dtype) if kind == "LSTM" else None
        p_d = (
            bb.emit(op.squeeze(op.strided_slice(peepholes, [0], [d], [d + 1]), [0]))
            if peepholes is not None
            else None
        )
        steps: list[Any] = [None] * seq
        for t in reversed(range(seq)) if reverse else range(seq):
            x_t = bb.emit(op.squeeze(op.strided_slice(projected, [0], [t], [t + 1]), [0]))
            act = activations[d]
            if kind == "LSTM":
                h, c = _lstm_step(bb, x_t, h, c, r_t, p_d, hidden, act, clip)
            elif kind == "GRU":
                h = _gru_step(
                    bb, x_t, h, r_t, r_bias, hidden, act, clip, int(attrs.get("linear_before_reset", 0))
                )
            else:
                h = bb.emit(act[0](_clipped(op.add(x_t, op.matmul(h, r_t)), clip)))
            steps[t] = h
        ys.append(bb.emit(op.stack(steps, axis=0)))  # [seq, batch, h]
        hs.append(h)
        cs.append(c)
    y = bb.emit(op.stack(ys, axis=1))  # [seq, dirs, batch, h]
    y_h = bb.emit(op.stack(hs, axis=0))  # [dirs, batch, h]
    outputs = [y, y_h]
    if kind == "LSTM":
        outputs.append(bb.emit(op.stack(cs, axis=0)))
    if layout:
        outputs = [bb.emit(op.permute_dims(outputs[0], [2, 0, 1, 3]))] + [
            bb.emit(op.permute_dims(state, [1, 0, 2])) for state in outputs[1:]
        ]
    return relax.Tuple(outputs)


def _lstm_step(
    bb: Any, x_t: Any, h: Any, c: Any, r_t: Any, p: Any, hidden: int, act: list[Callable], clip: Any
) -> tuple[Any, Any]:
    from tvm import relax

    op = relax.op
    pre = bb.emit(op.add(x_t, op.matmul(h, r_t)))  # [batch, 4h], gates i, o, f, c

    def gate(k: int) -> Any:
        return op.strided_slice(pre, [1], [k * hidden], [(k + 1) * hidden])

    def peep(k: int, state: Any) -> Any:
        return op.multiply(op.strided_slice(p, [0], [k * hidden], [(k + 1) * hidden]), state)

    i_pre, o_pre, f_pre, c_pre = gate(0), gate(1), gate(2), gate(3)
    if p is not None:
        i_pre, f_pre = op.add(i_pre, peep(0, c)), op.add(f_pre, peep(2, c))
    i = bb.emit(act[0](_clipped(i_pre, clip)))
    f = bb.emit(act[0](_clipped(f_pre, clip)))
    candidate = bb.emit(act[1](_clipped(c_pre, clip)))
    c = bb.emit(op.add(op.multiply(f, c), op.multiply(i, candidate)))
    if p is not None:
        o_pre = op.add(o_pre, peep(1, c))
    o = bb.emit(act[0](_clipped(o_pre, clip)))
    return bb.emit(op.multiply(o, act[2](c))), c


def _gru_step(
    bb: Any,
    x_t: Any,
    h: Any,
    r_t: Any,
    r_bias: Any,
    hidden: int,
    act: list[Callable],
    clip: Any,
    linear_before_reset: int,
) -> Any:
    from tvm import relax

    op = relax.op

    def part(tensor: Any, k: int, axis: int = 1) -> Any:
        return op.strided_slice(tensor, [axis], [k * hidden], [(k + 1) * hidden])

    recurrent = bb.emit(op.matmul(h, r_t))  # [batch, 3h], gates z, r, h
    if r_bias is not None:
        recurrent = bb.emit(op.add(recurrent, r_bias))
    z = bb.emit(act[0](_clipped(op.add(part(x_t, 0), part(recurrent, 0)), clip)))
    reset = bb.emit(act[0](_clipped(op.add(part(x_t, 1), part(recurrent, 1)), clip)))
    if linear_before_reset:
        hidden_pre = op.add(part(x_t, 2), op.multiply(reset, part(recurrent, 2)))
    else:
        r_h = part(r_t, 2)  # the h gate's columns of R^T
        gated = op.matmul(op.multiply(reset, h), r_h)
        if r_bias is not None:
            gated = op.add(gated, part(r_bias, 2, axis=0))
        hidden_pre = op.add(part(x_t, 2), gated)
    candidate = bb.emit(act[1](_clipped(hidden_pre, clip)))
    one = relax.const(1, z.ty.dtype)  # z is bound, so its type is known
    return bb.emit(op.add(op.multiply(op.subtract(one, z), candidate), op.multiply(z, h)))


def _state(bb: Any, initial: Any, d: int, batch: int, hidden: int, dtype: str) -> Any:
    from tvm import relax

    if initial is None:
        return bb.emit(relax.op.zeros((batch, hidden), dtype))
    return bb.emit(relax.op.squeeze(relax.op.strided_slice(initial, [0], [d], [d + 1]), [0]))


def _clipped(expr: Any, clip: Any) -> Any:
    from tvm import relax

    if clip is None:
        return expr
    return relax.op.clip(expr, -float(clip), float(clip))


def _check_full_lengths(lengths: Any, seq: int) -> None:
    import tvm

    if lengths is None:
        return
    if isinstance(lengths, tvm.ir.GenericConst) and (lengths.value.numpy() == seq).all():
        return
    raise ValueError("sequence_lens shorter than the sequence (or given at run time) is not supported")


def _activations(attrs: dict[str, Any], kind: str, directions: int, dtype: str) -> list[list[Callable]]:
    """Per direction, the activation functions (f, g, h...) with their alpha/beta bound."""
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in attrs.get("activations", [])]
    per_direction = len(DEFAULT_ACTIVATIONS[kind])
    if not names:
        names = list(DEFAULT_ACTIVATIONS[kind]) * directions
    alphas = list(attrs.get("activation_alpha", []))
    betas = list(attrs.get("activation_beta", []))
    functions = [
        _activation(name, alphas[i] if i < len(alphas) else None, betas[i] if i < len(betas) else None, dtype)
        for i, name in enumerate(names)
    ]
    return [functions[d * per_direction : (d + 1) * per_direction] for d in range(directions)]


def _activation(name: str, alpha: float | None, beta: float | None, dtype: str) -> Callable[[Any], Any]:
    from tvm import relax

    op = relax.op

    def const(value: float, like: Any) -> Any:
        return relax.const(value, dtype)

    table: dict[str, Callable[[Any], Any]] = {
        "sigmoid": op.sigmoid,
        "tanh": op.tanh,
        "relu": op.nn.relu,
        "leakyrelu": lambda x: op.nn.leakyrelu(x, 0.01 if alpha is None else alpha),
        "thresholdedrelu": lambda x: op.where(
            op.greater(x, const(1.0 if alpha is None else alpha, x)), x, const(0.0, x)
        ),
        "scaledtanh": lambda x: op.multiply(
            const(1.0 if alpha is None else alpha, x),
            op.tanh(op.multiply(const(1.0 if beta is None else beta, x), x)),
        ),
        "hardsigmoid": lambda x: op.clip(
            op.add(
                op.multiply(const(0.2 if alpha is None else alpha, x), x),
                const(0.5 if beta is None else beta, x),
            ),
            0.0,
            1.0,
        ),
        "elu": lambda x: op.where(
            op.greater_equal(x, const(0.0, x)),
            x,
            op.multiply(const(1.0 if alpha is None else alpha, x), op.subtract(op.exp(x), const(1.0, x))),
        ),
        "softsign": lambda x: op.divide(x, op.add(const(1.0, x), op.abs(x))),
        "softplus": lambda x: op.log(op.add(op.exp(x), const(1.0, x))),
        "affine": lambda x: op.add(
            op.multiply(const(1.0 if alpha is None else alpha, x), x), const(0.0 if beta is None else beta, x)
        ),
    }
    if name.lower() not in table:
        raise ValueError(f"recurrent activation '{name}' is not supported")
    return table[name.lower()]
