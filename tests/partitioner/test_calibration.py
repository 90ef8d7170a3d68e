"""partitioner/calibration.py on synthetic data: the fit recovers known costs, calibration.json round-trips,
and devices or ops without measurements fall back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nndeploy.errors import CalibrationError
from nndeploy.graph import analyze
from nndeploy.model_prep import prepare_model
from nndeploy.partitioner.calibration import (
    CALIBRATION_FILE,
    FEATURES,
    CalibratedCostModel,
    Calibration,
    cost_class,
    fit_device,
    nnls,
)
from nndeploy.partitioner.cost import RooflineCostModel
from nndeploy.partitioner.planner import plan
from nndeploy.types import HopCost, OpSample

from conftest import servers
from models import chain_model, conv_model


def synthetic(op: str, count: int, seed: int, gflop_ms: float, gb_ms: float, fixed: float) -> list[OpSample]:
    """Samples whose time is exactly gflop_ms x GFLOPs + gb_ms x GB + fixed (features drawn at random)."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        out_bytes = float(rng.uniform(1e4, 4e6))
        flops = float(rng.uniform(64, 4096)) * out_bytes / 4  # dense: many MACs per output
        nbytes = float(rng.uniform(1e4, 8e6))
        ms = gflop_ms * flops / 1e9 + gb_ms * nbytes / 1e9 + fixed
        samples.append(OpSample(op, flops, nbytes, float(rng.uniform(0, 1e6)), out_bytes, ms))
    return samples


def test_nnls_is_exact_and_never_negative() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (40, 3))
    assert np.allclose(nnls(a, a @ np.array([2.0, 0.5, 3.0])), [2.0, 0.5, 3.0])
    x = nnls(a, a @ np.array([2.0, -1.0, 0.0]))
    assert np.all(x >= 0)


def test_fit_recovers_known_coefficients() -> None:
    samples = synthetic("Conv", 30, 1, 9.0, 40.0, 0.02) + synthetic("Relu", 12, 2, 0.0, 15.0, 0.003)
    fitted = fit_device(samples, peak_gflops=100.0, mem_bw_gbytes_s=20.0, profile="cpu")
    conv = dict(zip(FEATURES, fitted.ops["Conv"].coefficients, strict=True))
    relu = dict(zip(FEATURES, fitted.ops["Relu"].coefficients, strict=True))
    assert conv["ms_per_gflop"] == pytest.approx(9.0, rel=1e-6)
    assert conv["ms_per_gb"] == pytest.approx(40.0, rel=1e-6)
    assert conv["fixed_ms"] == pytest.approx(0.02, rel=1e-6)
    assert relu["ms_per_gb"] == pytest.approx(15.0, rel=1e-6) and relu["fixed_ms"] == pytest.approx(0.003)
    assert fitted.ops["Conv"].samples == 30 and fitted.fit_error < 1e-6
    assert fitted.samples == 42


def test_depthwise_convolutions_are_their_own_cost_class() -> None:
    assert cost_class("Conv", flops=19 * 1000, out_bytes=4 * 1000) == "Conv:depthwise"
    assert cost_class("Conv", flops=1153 * 1000, out_bytes=4 * 1000) == "Conv"
    assert cost_class("Relu", flops=1000, out_bytes=4 * 1000) == "Relu"
    dense = synthetic("Conv", 10, 3, 10.0, 0.0, 0.01)
    rng = np.random.default_rng(4)
    depthwise = []
    for _ in range(6):
        out = float(rng.uniform(1e5, 2e6))
        depthwise.append(OpSample("Conv", 19 * out / 4, 2 * out, 4e3, out, 400.0 * out / 1e9 + 0.05))
    fitted = fit_device(dense + depthwise, 100.0, 20.0, "cpu")
    assert set(fitted.ops) == {"Conv", "Conv:depthwise"}
    row = np.array([19 * 1e6 / 4 / 1e9, 2e6 / 1e9, 4e3 / 1e9, 1e6 / 1e9, 1.0])
    assert fitted.predict("Conv:depthwise", row)[0] == pytest.approx(0.45, rel=1e-3)


def test_calibration_json_round_trip(tmp_path: Path) -> None:
    fitted = fit_device(
        synthetic("MatMul", 8, 5, 8.0, 10.0, 0.001),
        120.0,
        25.0,
        "x86-avx512-server",
        threads=2,
        host={"hostname": "h", "cpu": "c"},
        measured_at="2026-01-01T00:00:00+00:00",
        spec={"peak_gflops": 5888.0, "mem_bw_gbytes_s": 204.8},
    )
    calibration = Calibration({"x86-avx512-server": fitted})
    path = calibration.write(tmp_path)
    assert path == tmp_path / CALIBRATION_FILE
    data = json.loads(path.read_text())
    assert data["schema_version"] == "1.0" and data["devices"]["x86-avx512-server"]["threads"] == 2
    assert Calibration.read(tmp_path) == calibration
    with_hop = Calibration(calibration.devices, HopCost(0.25, 0.6))
    assert Calibration.read(with_hop.write(tmp_path)) == with_hop
    model = CalibratedCostModel(with_hop)
    assert model.transfer_ms(1 << 20, None) == pytest.approx(0.85)  # one MiB between two processes
    merged = calibration.merged(with_hop)
    assert merged.hop == with_hop.hop and with_hop.merged(calibration).hop == with_hop.hop


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (None, "not found"),
        ("{", "not valid JSON"),
        ('{"schema_version": "9.0", "devices": {}}', "schema_version"),
        ('{"schema_version": "1.0", "devices": {"x": 3}}', "malformed"),
        ("[1, 2]", "not a calibration file"),
    ],
)
def test_bad_calibration_files_are_one_line_errors(tmp_path: Path, text: str | None, fragment: str) -> None:
    if text is not None:
        (tmp_path / CALIBRATION_FILE).write_text(text)
    with pytest.raises(CalibrationError, match=fragment) as caught:
        Calibration.read(tmp_path)
    assert "\n" not in str(caught.value)


def _graph(model):  # type: ignore[no-untyped-def]
    return analyze(prepare_model(model), "m.onnx", "", {}, 1)


def test_cost_model_falls_back_for_unknown_ops_and_devices(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster(
        {
            "devices": [
                {"name": "a", "profile": "x86-avx512-server"},
                {"name": "b", "profile": "x86-avx2-server"},
            ]
        }
    )
    fitted = fit_device(synthetic("MatMul", 8, 6, 10.0, 0.0, 0.01), 100.0, 20.0, "x86-avx512-server")
    model = CalibratedCostModel(Calibration({"x86-avx512-server": fitted}))
    graph = _graph(chain_model())  # MatMul, Add, Relu: only MatMul has a fit of its own
    measured, other = cluster.devices
    times = model.node_ms(graph, measured)
    assert model.calibrated(measured) and not model.calibrated(other)
    for node, ms in zip(graph.nodes, times, strict=True):
        if node.op_type == "MatMul":
            assert ms == pytest.approx(10.0 * node.flops / 1e9 + 0.01)
        else:
            roof = max(node.flops / 100e9, (node.bytes_read + node.bytes_written) / 20e9) * 1e3
            assert ms == pytest.approx(fitted.fallback.scale * roof + fitted.fallback.fixed_ms)
    assert np.array_equal(model.node_ms(graph, other), RooflineCostModel().node_ms(graph, other))
    link = cluster.link("a", "b")
    assert model.transfer_ms(1e6, link) == RooflineCostModel().transfer_ms(1e6, link)


def test_planner_takes_the_calibrated_model(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster(servers(2))
    graph = _graph(conv_model())
    samples = synthetic("Conv", 8, 7, 10.0, 5.0, 0.01) + synthetic("Relu", 8, 8, 0.0, 10.0, 0.001)
    model = CalibratedCostModel(Calibration({"x86-avx512-server": fit_device(samples, 100.0, 20.0, "x")}))
    the_plan = plan(graph, cluster, "latency", model)
    expected = model.node_ms(graph, cluster.devices[0]).sum()
    assert sum(stage.compute_ms for stage in the_plan.stages) == pytest.approx(expected)
    assert the_plan.latency_ms > RooflineCostModel().node_ms(graph, cluster.devices[0]).sum()
