"""float32 exp on CPU targets: a vector polynomial (no scalar expf calls), as accurate as float32 needs,
with IEEE's special values, in kernels and in whole stages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from nndeploy.targets.build.check import BuildCheck
from nndeploy.targets.build.stage import build_stage
from nndeploy.targets.devices.registry import device_from_profile, load_profiles
from nndeploy.targets.frontend.fast_math import use_fast_exp

from models import silu_softmax_model

LANES = 16


def _kernels(dtype: str) -> tuple[object, str]:
    """exp, sigmoid and tanh of one vector, each a parallel loop vectorised by LANES; (library, its IR)."""
    import tvm
    from tvm import te

    use_fast_exp()
    size = 1 << 16
    a = te.placeholder((size,), dtype, name="a")
    outputs = [
        te.compute((size,), lambda i: te.exp(a[i]), name="exp"),
        te.compute((size,), lambda i: te.sigmoid(a[i]), name="sigmoid"),
        te.compute((size,), lambda i: te.tanh(a[i]), name="tanh"),
    ]
    schedule = tvm.s_tir.Schedule(te.create_prim_func([a, *outputs]))
    for name in ("exp", "sigmoid", "tanh"):
        (loop,) = schedule.get_loops(schedule.get_sblock(name))
        outer, inner = schedule.split(loop, [None, LANES])
        schedule.vectorize(inner)
        schedule.parallel(outer)
    library = tvm.compile(schedule.mod, target={"kind": "llvm"})
    return library, library.mod.inspect_source("ll")


def _run(library: object, x: np.ndarray) -> list[np.ndarray]:
    import tvm

    device = tvm.cpu()
    arrays = [tvm.runtime.tensor(x, device)] + [
        tvm.runtime.tensor(np.zeros_like(x), device) for _ in range(3)
    ]
    library(*arrays)
    return [array.numpy() for array in arrays[1:]]


def test_float32_exp_sigmoid_and_tanh_are_vector_code_within_float32_accuracy() -> None:
    library, ir = _kernels("float32")
    assert "@expf" not in ir and "llvm.exp." not in ir  # no scalar libm call, no LLVM exp left to split
    assert "<16 x float>" in ir
    x = np.linspace(-100, 100, 1 << 16, dtype=np.float32)
    exp, sigmoid, tanh = _run(library, x)
    wide = x.astype(np.float64)
    with np.errstate(over="ignore"):
        reference = np.exp(wide)
    finite = (reference > 2.5e-38) & (reference < np.finfo(np.float32).max)
    assert np.max(np.abs(exp[finite] - reference[finite]) / reference[finite]) < 2e-7
    assert np.max(exp[reference <= 2.5e-38]) < 2.5e-38  # flushed to zero below, as the docstring says
    assert np.all(np.isinf(exp[reference >= np.finfo(np.float32).max]))
    assert np.max(np.abs(sigmoid - 1 / (1 + np.exp(-wide)))) < 2e-7
    assert np.max(np.abs(tanh - np.tanh(wide))) < 2e-7


def test_special_values_keep_their_meaning() -> None:
    library, _ = _kernels("float32")
    x = np.zeros(1 << 16, np.float32)
    x[:6] = [np.nan, np.inf, -np.inf, 88.8, 88.7, 0.0]
    exp, sigmoid, tanh = _run(library, x)
    assert np.isnan(exp[0]) and np.isnan(sigmoid[0]) and np.isnan(tanh[0])
    assert exp[1] == np.inf and exp[2] == 0.0 and exp[3] == np.inf  # exp overflows float32 at 88.72
    assert np.isfinite(exp[4]) and exp[4] > 3.3e38
    assert sigmoid[1] == 1.0 and sigmoid[2] == 0.0 and tanh[1] == 1.0 and tanh[2] == -1.0
    assert exp[5] == 1.0 and sigmoid[5] == 0.5 and tanh[5] == 0.0


def test_float64_exp_keeps_llvms_own_exp() -> None:
    library, ir = _kernels("float64")
    assert "llvm.exp." in ir or "@exp(" in ir
    x = np.linspace(-700, 700, 1 << 16)
    exp, _, _ = _run(library, x)
    np.testing.assert_allclose(exp, np.exp(x), rtol=1e-14)


@pytest.mark.parametrize("profile", ["x86-avx512-server", "raspberry-pi-5"])
def test_a_stage_with_silu_and_softmax_builds_without_expf_and_matches_onnxruntime(
    profile: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NNDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "stage.onnx"
    onnx.save(silu_softmax_model(), path)
    device = device_from_profile(load_profiles()[profile], "dev")
    native = profile.startswith("x86")
    record = build_stage(path, 0, device, tmp_path / "build", check=BuildCheck() if native else None)
    assert record.artifact is not None, record.error
    ir = (tmp_path / "build" / record.artifact.options["sources"]["ir"]).read_text()
    assert "@expf" not in ir and "llvm.exp." not in ir
    if native:  # the emulated aarch64 stage is checked against onnxruntime by the compile CLI's tests
        assert record.artifact.options["check"]["status"] == "pass"
