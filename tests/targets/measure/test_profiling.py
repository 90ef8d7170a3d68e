"""targets/measure/profiling.py and `nndeploy profile`: which devices this host can stand in for, real (quick)
measurements, and the point of it all: a calibrated model predicts a held-out model's stage times better
than the spec-sheet roofline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from nndeploy.graph import load_graph, load_prepared_model
from nndeploy.partitioner.calibration import CalibratedCostModel, Calibration, fit_device, stage_ms
from nndeploy.partitioner.cost import RooflineCostModel
from nndeploy.partitioner.planner import plan
from nndeploy.partitioner.split import split
from nndeploy.targets.devices.registry import device_from_profile, load_profiles
from nndeploy.targets.measure import profiling
from nndeploy.targets.measure.op_sweep import sweep_cases

from conftest import servers
from models import chain_model, light_model_path

CPU_PROFILES = ("x86-avx512-server", "x86-avx2-server", "raspberry-pi-5", "jetson-orin-nano-cpu")


def device(profile: str):  # type: ignore[no-untyped-def]
    return device_from_profile(load_profiles()[profile], "d")


def runnable_profile() -> str:
    """A built-in CPU profile this host can measure, or skip the test."""
    for name in CPU_PROFILES:
        if profiling.why_not_measurable(device(name)) is None:
            return name
    pytest.skip("no built-in CPU profile matches this host")


def test_foreign_architectures_and_gpus_are_not_runnable() -> None:
    machine = profiling.host_machine()
    foreign = next(n for n in CPU_PROFILES if device(n).arch != machine)
    reason = profiling.why_not_measurable(device(foreign))
    assert reason is not None and "run `nndeploy profile` on the device itself" in reason
    if device(foreign).arch == "aarch64":
        assert "qemu" in reason
    assert "GPU kernels are not profiled" in (profiling.why_not_measurable(device("nvidia-t4")) or "")


@pytest.mark.skipif(profiling.host_machine() != "x86_64", reason="x86-64 mcpu checks")
def test_avx512_profiles_need_avx512f() -> None:
    import tvm
    from tvm.target import codegen

    server = device("x86-avx512-server")
    spec = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": server.tvm_target["mcpu"]}
    own = frozenset(str(f) for f in codegen.llvm_get_cpu_features(tvm.target.Target(spec)))
    without_avx512 = frozenset(f for f in own if not f.startswith("avx512"))
    lacking = profiling.why_not_measurable(server, flags=without_avx512)
    assert lacking is not None and "avx512f" in lacking and "avx2" not in lacking
    assert profiling.why_not_measurable(server, flags=own) is None


def test_every_sweep_case_is_a_known_single_node() -> None:
    cases = sweep_cases()
    assert len(cases) > len(sweep_cases(quick=True)) > 30
    ops = set()
    for case in cases:
        graph = load_graph_from(case.model)
        assert len(graph.nodes) == 1 and not graph.nodes[0].estimated, case.label
        ops.add(graph.nodes[0].op_type)
    wanted = {"Conv", "MatMul", "Gemm", "Add", "Mul", "Relu", "Clip", "Sigmoid", "Softmax", "MaxPool"}
    wanted |= {"AveragePool", "GlobalAveragePool", "BatchNormalization", "LayerNormalization", "Concat"}
    wanted |= {"Transpose", "Reshape", "Erf"}
    assert wanted <= ops


def load_graph_from(model):  # type: ignore[no-untyped-def]
    from nndeploy.graph import analyze
    from nndeploy.model_prep import prepare_model

    return analyze(prepare_model(model), "case", "", {}, 1)


def test_node_models_cut_every_node_and_run(tmp_path: Path) -> None:
    import onnx

    path = tmp_path / "chain.onnx"
    onnx.save(chain_model(), path)
    prepared, graph = profiling.load_for_timing(path)
    singles = profiling.node_models(prepared)
    assert [i for i, _ in singles] == list(range(len(graph.nodes)))
    samples, failed = profiling.model_samples(prepared, graph, 1, 0.0, "chain.onnx")
    assert not failed
    assert {s.op_type for s in samples} == {"MatMul", "Add", "Relu"}
    assert all(s.ms > 0 and s.source == "chain.onnx" for s in samples)


def test_quick_measurements_are_plausible() -> None:
    assert 0.5 < profiling.peak_gflops(1, size=256, reps=3) < 1e5
    assert 0.1 < profiling.memory_bandwidth_gbps(1, mib=4, reps=3) < 1e4
    assert 0 < profiling.call_overhead_ms(1) < 1.0


def stage_errors(model_path: Path, cluster, models: dict[str, object]) -> dict[str, list[float]]:  # type: ignore[no-untyped-def]
    """Relative error of each cost model's prediction for each stage of a 2- and a 3-stage split."""
    graph = load_graph(model_path)
    prepared = load_prepared_model(model_path)
    errors: dict[str, list[float]] = {name: [] for name in models}
    for count in (2, 3):
        sub = cluster(count)
        the_plan = plan(graph, sub, "throughput")
        for stage, stage_model in zip(the_plan.stages, split(prepared, the_plan), strict=True):
            measured = profiling.model_ms(stage_model, threads=1)
            for name, model in models.items():
                predicted = stage_ms(model, graph, sub.device(stage.device), stage.nodes)  # type: ignore[arg-type]
                errors[name].append(abs(predicted - measured) / measured)
    return errors


def test_calibration_improves_held_out_stage_predictions(example_models, make_cluster) -> None:  # type: ignore[no-untyped-def]
    name = runnable_profile()
    measured = profiling.profile_host(threads=1, models=[example_models["camera_cnn"]], quick=True)
    assert measured.peak_gflops > 0 and measured.mem_bw_gbytes_s > 0
    assert {s.source for s in measured.samples} == {"sweep", "camera_cnn.onnx"}
    fitted = fit_device(measured.samples, measured.peak_gflops, measured.mem_bw_gbytes_s, name)
    models = {
        "spec roofline": RooflineCostModel(),
        "calibrated": CalibratedCostModel(Calibration({name: fitted})),
    }
    errors = stage_errors(
        light_model_path("squeezenet"), lambda n: make_cluster(servers(n, profile=name)), models
    )
    spec, calibrated = (float(np.median(errors[k])) for k in models)
    assert calibrated < spec, errors
    assert calibrated < 0.5, errors


def nndeploy(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nndeploy", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def test_profile_cli_writes_profiles_that_plan_reads(tmp_path: Path, example_models) -> None:  # type: ignore[no-untyped-def]
    name = runnable_profile()
    foreign = next(n for n in CPU_PROFILES if device(n).arch != profiling.host_machine())
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(
        yaml.safe_dump(
            {
                "name": "here-and-there",
                "devices": [{"name": "here", "profile": name}, {"name": "there", "profile": foreign}],
                "input_at": "here",
                "output_to": "here",
            }
        )
    )
    out = tmp_path / "measured"
    done = nndeploy("profile", "--cluster", cluster, "-o", out, "--quick", "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert name in done.stdout and "skipped there" in done.stdout
    written = yaml.safe_load((out / f"{name}.yaml").read_text())
    assert written["name"] == name and "measured" in written["description"]
    calibration = json.loads((out / "calibration.json").read_text())
    entry = calibration["devices"][name]
    assert written["peak_gflops"]["float32"] == pytest.approx(entry["peak_gflops"]["float32"], rel=1e-3)
    assert entry["threads"] == 1 and entry["samples"] > 30 and "Conv" in entry["ops"]
    # The data plane's hop, measured on loopback: a fraction of a millisecond per message here.
    assert 0 < calibration["hop"]["fixed_ms"] < 50 and calibration["hop"]["ms_per_mib"] >= 0
    assert "a hop between stages costs" in done.stdout
    if written["tvm_target"]["kind"] == "llvm":
        assert written["tvm_target"]["num-cores"] == 1

    planned = nndeploy(
        "plan",
        example_models["camera_cnn"],
        "--cluster",
        cluster,
        "--profiles",
        out,
        "-o",
        tmp_path / "p.json",
    )
    assert planned.returncode == 0, planned.stderr
    assert "the plan uses measured costs" in planned.stdout and f"here ({name})" in planned.stdout

    (out / "calibration.json").write_text("{ not json")
    broken = nndeploy(
        "plan",
        example_models["camera_cnn"],
        "--cluster",
        cluster,
        "--profiles",
        out,
        "-o",
        tmp_path / "q.json",
    )
    assert broken.returncode == 2 and broken.stderr.startswith("error: ")
    assert (
        "calibration.json: not valid JSON" in broken.stderr and len(broken.stderr.strip().splitlines()) == 1
    )


def test_profile_cli_refuses_a_cluster_it_cannot_measure(tmp_path: Path) -> None:
    foreign = next(n for n in CPU_PROFILES if device(n).arch != profiling.host_machine())
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({"devices": [{"name": "far", "profile": foreign}]}))
    done = nndeploy("profile", "--cluster", cluster, "-o", tmp_path / "out")
    assert done.returncode == 2, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no device of cluster" in lines[0]
    assert "Traceback" not in done.stderr
