"""onnxruntime as the reference: run a model or a chain of stage models, and compare tensors.

onnxruntime is imported here (and only where a stage falls back to it), inside the functions that use
it, so importing nndeploy stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from nndeploy.types import TensorSpec

DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    # dtype: (atol, rtol)
    "float64": (1e-9, 1e-7),
    "float32": (1e-5, 1e-4),
    "float16": (1e-2, 1e-2),
    "bfloat16": (5e-2, 5e-2),
}

# Compiled code reorders floating-point sums, so it is held to looser bounds than onnxruntime vs itself.
VERIFY_TOLERANCES: dict[str, tuple[float, float]] = {**DEFAULT_TOLERANCES, "float32": (1e-4, 1e-3)}


def float_tolerances(atol: float | None, rtol: float | None) -> dict[str, tuple[float, float]]:
    """Per float dtype (atol, rtol): `verify`'s defaults, with the given ones in their place."""
    table = {}
    for dtype in ("float64", "float32", "float16", "bfloat16"):
        default_atol, default_rtol = VERIFY_TOLERANCES[dtype]
        table[dtype] = (default_atol if atol is None else atol, default_rtol if rtol is None else rtol)
    return table


@dataclass(frozen=True)
class Comparison:
    """How far one output is from the reference."""

    name: str
    max_abs: float
    max_rel: float
    atol: float
    rtol: float
    ok: bool  # |got - want| <= atol + rtol * |want| everywhere (np.allclose's test), same shape, NaNs alike


def session(model: onnx.ModelProto | str, threads: int | None = None, optimization: str | None = None):
    """An onnxruntime CPU InferenceSession for a ModelProto or a file path; with `threads`, that many
    intra-op threads, one inter-op thread and sequential execution; with `optimization` ("none", "basic"
    or "all"), that graph optimisation level instead of onnxruntime's default."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if optimization is not None:
        options.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization]
    payload = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])


def random_inputs(
    specs: tuple[TensorSpec, ...], seed: int, int_high: int | None = None
) -> dict[str, np.ndarray]:
    """Seeded random tensors for the given specs (normal floats; booleans; non-negative integers below
    `int_high`, by default below 100, or 2 for an input named like a mask)."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            tensors[spec.name] = rng.standard_normal(spec.shape).astype(dtype)
        elif dtype.kind == "b":
            tensors[spec.name] = rng.integers(0, 2, size=spec.shape).astype(bool)
        else:
            high = int_high or (2 if "mask" in spec.name else 100)
            tensors[spec.name] = rng.integers(0, high, size=spec.shape).astype(dtype)
    return tensors


def run_model(
    model: onnx.ModelProto | str, inputs: Mapping[str, np.ndarray], threads: int | None = None
) -> dict[str, np.ndarray]:
    """Run `model` on `inputs` with onnxruntime; returns every graph output by name. A model onnxruntime
    has no kernel for (old opsets: PRelu-6, AveragePool-1, ...) runs on onnx's reference evaluator."""
    try:
        sess = session(model, threads)
    except Exception as exc:  # onnxruntime's errors have no common base class
        if "NOT_IMPLEMENTED" not in str(exc):
            raise
        return _run_reference(model, inputs, exc)
    wanted = {i.name for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    results = sess.run(names, {k: v for k, v in inputs.items() if k in wanted})
    return dict(zip(names, results, strict=True))


def _run_reference(
    model: onnx.ModelProto | str, inputs: Mapping[str, np.ndarray], refused: Exception
) -> dict[str, np.ndarray]:
    """Every graph output of `model` from onnx's reference evaluator; onnxruntime's `refused` error is
    raised again when the evaluator cannot run the model either."""
    from onnx.reference import ReferenceEvaluator

    try:
        evaluator = ReferenceEvaluator(model)
        wanted = set(evaluator.input_names)
        results = evaluator.run(None, {k: v for k, v in inputs.items() if k in wanted})
    except Exception:  # the evaluator's errors are plain Python exceptions of many kinds
        raise refused from None
    return dict(zip(evaluator.output_names, (np.asarray(r) for r in results), strict=True))


def run_chain(
    stage_models: Sequence[onnx.ModelProto | str],
    inputs: Mapping[str, np.ndarray],
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Run stage models one after another, each taking what it needs from everything produced so far."""
    tensors = dict(inputs)
    for model in stage_models:
        tensors.update(run_model(model, tensors, threads))
    return tensors


def compare(
    expected: Mapping[str, np.ndarray],
    got: Mapping[str, np.ndarray],
    tolerances: Mapping[str, tuple[float, float]] | None = None,
) -> list[Comparison]:
    """Per expected output: max absolute and relative error of `got` against it, with its tolerance."""
    table = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    results = []
    for name, want in expected.items():
        have = np.asarray(got[name])
        atol, rtol = table.get(str(want.dtype), (0.0, 0.0))
        if want.shape != have.shape:
            results.append(Comparison(name, float("inf"), float("inf"), atol, rtol, False))
            continue
        if want.size == 0:
            results.append(Comparison(name, 0.0, 0.0, atol, rtol, True))
            continue
        want64, have64 = want.astype(np.float64), have.astype(np.float64)
        same = (want64 == have64) | (np.isnan(want64) & np.isnan(have64))
        diff = np.where(same, 0.0, np.abs(want64 - have64))
        rel = diff / np.maximum(np.abs(want64), np.finfo(np.float64).tiny)
        ok = bool(np.all(np.where(same, True, diff <= atol + rtol * np.abs(want64))))
        results.append(Comparison(name, float(np.nanmax(diff)), float(np.nanmax(rel)), atol, rtol, ok))
    return results


def assert_matches_onnxruntime(
    reference: onnx.ModelProto | str,
    got: Mapping[str, np.ndarray],
    inputs: Mapping[str, np.ndarray],
    atol: float = 1e-5,
) -> list[Comparison]:
    """Raise AssertionError unless every output of `reference` on `inputs` is within `atol` of `got`."""
    expected = run_model(reference, inputs)
    results = compare(expected, got, {dtype: (atol, 0.0) for dtype in DEFAULT_TOLERANCES})
    bad = [r for r in results if not r.max_abs <= atol]
    assert not bad, "; ".join(f"{r.name}: max abs diff {r.max_abs:.3g} > {atol}" for r in bad)
    return results
