"""The conformance runner on a fixed sample of the onnx package's node cases, and its crash isolation."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from conformance_runner import WAYS, Case, IsolatedPool, load_cases

SAMPLE = ("test_abs", "test_relu", "test_softmax_axis_0", "test_celu", "test_lstm_defaults", "test_cumsum_1d")


def _run(cases: list[Case], tmp_path: Path, job=None, timeout_s: float = 120.0):  # type: ignore[no-untyped-def]
    pool = IsolatedPool(2, timeout_s, tmp_path, job) if job else IsolatedPool(2, timeout_s, tmp_path)
    try:
        return {
            (case.name, way): (outcome, detail)
            for case, way, outcome, detail, _ in pool.run((c, w) for c in cases for w in WAYS)
        }
    finally:
        pool.close()


@pytest.mark.slow
def test_a_fixed_sample_runs_every_way(tmp_path: Path) -> None:
    cases = load_cases(SAMPLE)
    assert sorted(c.name for c in cases) == sorted(SAMPLE)
    results = _run(cases, tmp_path)
    assert len(results) == len(SAMPLE) * len(WAYS)
    for name in ("test_abs", "test_relu", "test_softmax_axis_0"):
        assert all(results[(name, way)][0] == "pass" for way in WAYS), results
    for name in ("test_celu", "test_lstm_defaults"):  # ops TVM's frontend does not import
        assert results[(name, "onnxruntime")][0] == "pass"
        assert results[(name, "tvm")][0] == "error" and "not supported" in results[(name, "tvm")][1]
    # Celu's standard definition (a function body) is expanded, LSTM has the project's own converter:
    # both compile with TVM.
    for name in ("test_celu", "test_lstm_defaults"):
        assert results[(name, "nndeploy")] == ("pass", "")
        assert results[(name, "nndeploy+fallback")] == ("pass", "")
    assert results[("test_cumsum_1d", "onnxruntime")][0] == "pass"  # a numpy-scalar axis input


def crash_or_hang(case: Case, way: str, scratch: Path) -> tuple[str, str]:
    """A stand-in job: kills its own process, hangs, or passes, by case name."""
    if case.name == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if case.name == "hang":
        time.sleep(600)
    return "pass", way


def test_a_crash_or_a_hang_costs_one_case(tmp_path: Path) -> None:
    cases = [Case(name, "Op", b"", (), 0.0, 0.0) for name in ("before", "crash", "hang", "after")]
    started = time.monotonic()
    results = _run(cases, tmp_path, crash_or_hang, timeout_s=3.0)
    assert time.monotonic() - started < 60
    assert {results[("crash", way)][0] for way in WAYS} == {"crash"}
    assert "exit code" in results[("crash", "tvm")][1]
    assert {results[("hang", way)][0] for way in WAYS} == {"timeout"}
    assert {results[(name, way)] for name in ("before", "after") for way in WAYS} == {
        ("pass", way) for way in WAYS
    }


def test_the_node_tvm_computes_wrongly_is_found_on_its_own(tmp_path: Path) -> None:
    """IsInf with detect_negative=0 compiles and answers True for -inf too; run node by node, that node is
    the one named."""
    from conformance_runner import wrong_node_signatures

    (isinf,) = load_cases(["test_isinf_positive"])
    assert wrong_node_signatures(isinf, tmp_path) == ["ai.onnx.IsInf(float32[1]; detect_negative=0) -> 1"]
    (relu,) = load_cases(["test_relu"])
    assert wrong_node_signatures(relu, tmp_path) == []


def test_shipped_known_wrong_list_was_generated_and_is_used() -> None:
    from nndeploy.targets.frontend.coverage import KNOWN_WRONG_FILE, load_known_wrong

    data = json.loads(KNOWN_WRONG_FILE.read_text())
    assert data["generated_by"]["by"].startswith("benchmarks/conformance.py --write-known-wrong")
    assert load_known_wrong()["ai.onnx.IsInf(float32[1]; detect_negative=0) -> 1"] == "test_isinf_positive"
    assert not any(signature.startswith("ai.onnx.Mish") for signature in load_known_wrong())


@pytest.mark.slow
def test_what_only_the_build_check_catches_falls_back(tmp_path: Path) -> None:
    """Three cases no single node explains: float16 rounding that builds up across the compiled parts,
    NaN from a fused kernel on a fully masked row (found by the all-false mask sample), and an error
    inside TVM's runtime. Without fallback they are wrong or fail; with it, the build-time check sends
    them to onnxruntime and they pass."""
    names = [
        "test_attention_4d_causal_fp16_expanded",
        "test_attention_24_qk_matmul_output_mode3_softmax_precision_expanded",
        "test_causal_conv_with_state_kernel_size_one_expanded",
    ]
    results = _run(load_cases(names), tmp_path)
    for name in names:
        assert results[(name, "nndeploy")][0] in {"wrong", "error"}, results[(name, "nndeploy")]
        assert results[(name, "nndeploy+fallback")] == ("pass", "onnxruntime fallback")
