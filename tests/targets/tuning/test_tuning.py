"""nndeploy tune and compile --db: the tuning database, its reuse, and best-of selection."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_cli import assert_user_error, nndeploy

from nndeploy.cli.tune import DurationError, parse_duration
from nndeploy.errors import BuildError
from nndeploy.targets.tuning import database as tuning_db

from models import attention_model, conv_model, random_inputs

ONE_SERVER = """
name: one
devices:
  - {name: server, profile: x86-avx2-server}
"""


def matmul_model(seed: int, name: str) -> onnx.ModelProto:
    """x[8,64] @ W[64,32] + b, then Relu: one fused TVM task. The same shapes with other weights and names
    give the same workload."""
    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), f"{name}_w"),
        numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), f"{name}_b"),
    ]
    nodes = [
        helper.make_node("MatMul", [f"{name}_x", f"{name}_w"], [f"{name}_m"]),
        helper.make_node("Add", [f"{name}_m", f"{name}_b"], [f"{name}_a"]),
        helper.make_node("Relu", [f"{name}_a"], [f"{name}_y"]),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(f"{name}_x", TensorProto.FLOAT, [8, 64])],
        [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [8, 32])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def avx2_host() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return " avx2 " in flags and " fma " in flags


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("10m", 600), ("1h30m", 5400), ("45", 45), ("1.5m", 90)]
)
def test_budget_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["ten minutes", "10x", "m", "5m junk", ""])
def test_bad_budget_is_refused(text: str) -> None:
    with pytest.raises(DurationError, match="not a duration"):
        parse_duration(text)


def test_database_folders_are_per_target() -> None:
    avx2 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}
    avx512 = {**avx2, "mcpu": "icelake-server"}
    assert tuning_db.target_key(avx2) == tuning_db.target_key(dict(reversed(list(avx2.items()))))
    assert tuning_db.target_key(avx2) != tuning_db.target_key(avx512)
    assert tuning_db.target_key(avx2).startswith("llvm-haswell-")
    assert tuning_db.target_key({**avx2, "num-cores": 2}) != tuning_db.target_key(avx2)


def test_trials_are_counted_per_workload(tmp_path: Path) -> None:
    (tmp_path / tuning_db.WORKLOADS).write_text('["111", "AAA"]\n["222", "BBB"]\n')
    (tmp_path / tuning_db.RECORDS).write_text("[0, []]\n[1, []]\n[0, []]\n\n")
    assert tuning_db.trials_per_workload(tmp_path) == {"111": 2, "222": 1}
    assert tuning_db.has_records(tmp_path)
    first = tuning_db.fingerprint(tmp_path)
    (tmp_path / tuning_db.RECORDS).write_text("[0, []]\n")
    assert tuning_db.fingerprint(tmp_path) != first
    assert tuning_db.fingerprint(tmp_path / "absent") == ""


def test_export_keeps_each_workloads_best_record(tmp_path: Path) -> None:
    source, shipped = tmp_path / "db", tmp_path / "shipped"
    source.mkdir()
    (source / tuning_db.WORKLOADS).write_text('["111", "A"]\n["222", "B"]\n["333", "C"]\n')
    (source / tuning_db.RECORDS).write_text(
        '[0, [["slow"], [0.003, 0.003], {}, []]]\n'
        '[1, [["only"], [0.5], {}, []]]\n'
        '[0, [["fast"], [0.001, 0.002], {}, []]]\n'
        '[2, [["failed"], [], {}, []]]\n'
    )
    assert tuning_db.export_best(source, shipped) == (2, 2)
    assert tuning_db.trials_per_workload(shipped) == {"111": 1, "222": 1}
    kept = [json.loads(line) for line in (shipped / tuning_db.RECORDS).read_text().splitlines()]
    assert [(index, record[0]) for index, record in kept] == [(0, ["fast"]), (1, ["only"])]


def test_a_damaged_database_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / tuning_db.WORKLOADS).write_text('["111", "AAA"]\n')
    (tmp_path / tuning_db.RECORDS).write_text("[0, []]\n{not json\n")
    with pytest.raises(BuildError, match=r"database_tuning_record.json:2: .*damaged"):
        tuning_db.trials_per_workload(tmp_path)
    (tmp_path / tuning_db.RECORDS).write_text("[7, []]\n")  # points at a workload that is not there
    with pytest.raises(BuildError, match="damaged"):
        tuning_db.trials_per_workload(tmp_path)


def test_devices_this_machine_cannot_measure_are_not_tuned(make_cluster) -> None:
    from nndeploy.targets.tuning.tuner import why_not_tunable

    cluster = make_cluster(
        {
            "devices": [
                {"name": "pi", "profile": "raspberry-pi-5"},
                {"name": "gpu", "profile": "nvidia-t4"},
            ],
            "default_link": {"gbps": 1, "latency_ms": 1},
        }
    )
    assert "emulator say nothing" in why_not_tunable(cluster.device("pi"))
    assert "CUDA" in why_not_tunable(cluster.device("gpu"))


def test_compile_and_tune_refuse_a_missing_database_and_a_bad_budget(tmp_path: Path) -> None:
    onnx.save(matmul_model(0, "m"), tmp_path / "m.onnx")
    (tmp_path / "one.yaml").write_text(ONE_SERVER)
    assert (
        nndeploy(
            "plan", tmp_path / "m.onnx", "--cluster", tmp_path / "one.yaml", "-o", tmp_path / "p.json"
        ).returncode
        == 0
    )
    assert_user_error(nndeploy("compile", tmp_path / "p.json", "--db", tmp_path / "nowhere"), "nowhere")
    assert_user_error(nndeploy("tune", tmp_path / "p.json", "--budget", "soon"), "--budget 'soon'")


@pytest.mark.slow
@pytest.mark.skipif(not avx2_host(), reason="this CPU cannot run the AVX2 server's code")
def test_tune_then_compile_reuses_the_database(tmp_path: Path) -> None:
    (tmp_path / "one.yaml").write_text(ONE_SERVER)
    db = tmp_path / "tuning"
    plans = []
    for seed, name in ((0, "first"), (1, "second")):
        onnx.save(matmul_model(seed, name), tmp_path / f"{name}.onnx")
        plan = tmp_path / f"{name}.json"
        done = nndeploy("plan", tmp_path / f"{name}.onnx", "--cluster", tmp_path / "one.yaml", "-o", plan)
        assert done.returncode == 0, done.stderr
        plans.append(plan)

    tuned = nndeploy("tune", plans[0], "--budget", "1s", "--db", db, "--trials-per-task", "4")
    assert tuned.returncode == 0, tuned.stderr
    assert "4 trials measured" in tuned.stdout
    (folder,) = [p for p in db.iterdir() if p.is_dir()]
    assert folder.name.startswith("llvm-haswell-")
    counts = tuning_db.trials_per_workload(folder)
    assert sorted(counts.values()) == [4]
    fingerprint = tuning_db.fingerprint(folder)

    # The same plan again, and another model with the same workload: nothing left to tune.
    for plan in plans:
        again = nndeploy("tune", plan, "--budget", "1s", "--db", db, "--trials-per-task", "4")
        assert again.returncode == 0, again.stderr
        assert "0 trials measured" in again.stdout
    assert tuning_db.fingerprint(folder) == fingerprint

    # compile --db applies the records and runs no trials; --best-of times every candidate.
    build = tmp_path / "build"
    done = nndeploy("compile", plans[1], "-o", build, "--db", db, "--best-of")
    assert done.returncode == 0, done.stderr
    assert tuning_db.fingerprint(folder) == fingerprint
    entry = json.loads((build / "manifest.json").read_text())["stages"][0]
    options = entry["artifact"]["options"]
    assert set(options["measured_ms"]) == {"tvm-tuned", "tvm-untuned", "onnxruntime"}
    assert all(ms > 0 for ms in options["measured_ms"].values())
    assert options["selected"] == min(options["measured_ms"], key=options["measured_ms"].get)
    assert (entry["status"] == "fallback") == (options["selected"] == "onnxruntime")
    assert not (build / "candidates").exists()
    verified = nndeploy("verify", build, "--samples", "1")
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # With --no-best-of the tuned build is used as it is.
    tuned_build = tmp_path / "tuned_build"
    done = nndeploy("compile", plans[1], "-o", tuned_build, "--db", db, "--no-best-of")
    assert done.returncode == 0, done.stderr
    entry = json.loads((tuned_build / "manifest.json").read_text())["stages"][0]
    assert entry["artifact"]["options"]["pipeline"] == "llvm-metaschedule"
    assert "(tuned)" in done.stdout
    verified = nndeploy("verify", tuned_build, "--samples", "1")
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # A CNN through the tuned pipeline (BatchNorm folded, NHWC, weights re-laid by numpy) keeps its answer.
    onnx.save(conv_model(), tmp_path / "cnn.onnx")
    cnn_plan = tmp_path / "cnn.json"
    done = nndeploy("plan", tmp_path / "cnn.onnx", "--cluster", tmp_path / "one.yaml", "-o", cnn_plan)
    assert done.returncode == 0, done.stderr
    cnn_build = tmp_path / "cnn_build"
    done = nndeploy("compile", cnn_plan, "-o", cnn_build, "--db", db)
    assert done.returncode == 0, done.stderr
    verified = nndeploy("verify", cnn_build, "--samples", "2")
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.slow
def test_the_shipped_database_tunes_the_quickstart_server_stage(example_models, tmp_path: Path) -> None:
    """examples/tuning/ was tuned for the quickstart's plan: compiling it applies the records, no trials."""
    shipped = Path(__file__).parents[3] / "examples" / "tuning"
    plan = tmp_path / "plan.json"
    cluster = Path(__file__).parents[3] / "examples" / "clusters" / "edge-camera-server.yaml"
    assert nndeploy("plan", example_models["camera_cnn"], "--cluster", cluster, "-o", plan).returncode == 0
    before = {p: p.read_bytes() for p in shipped.rglob("*.json")}
    build = tmp_path / "build"
    done = nndeploy("compile", plan, "-o", build, "--db", shipped, "--jobs", "2")
    assert done.returncode == 0, done.stderr
    assert {p: p.read_bytes() for p in shipped.rglob("*.json")} == before
    stages = {s["device"]: s for s in json.loads((build / "manifest.json").read_text())["stages"]}
    assert stages["server"]["artifact"]["options"]["pipeline"] == "llvm-metaschedule"
    assert stages["camera"]["artifact"]["options"]["pipeline"] == "llvm-default"  # aarch64: not tuned here
    from nndeploy.targets.devices.registry import device_from_profile, load_profiles
    from nndeploy.targets.tuning.tuner import extract_tasks

    server = device_from_profile(load_profiles()["x86-avx512-server"], "server")
    stage_model = onnx.load(str(build / "stages" / f"stage_{stages['server']['stage']}.onnx"))
    tasks = extract_tasks([(1, stage_model)], server, tuning_db.target_db_dir(shipped, server.tvm_target))
    untuned = [task.name for task in tasks if task.trials_done == 0]
    assert tasks and not untuned, untuned


@pytest.mark.parametrize("build_model", [attention_model, conv_model], ids=["attention", "cnn"])
def test_functions_without_records_get_a_parallel_vectorised_schedule(build_model) -> None:  # type: ignore[no-untyped-def]
    """Without tuning records every TIR function is still scheduled (parallel outer loops), and the
    result keeps onnxruntime's answer, fast-math exp included."""
    import tvm
    from tvm import relax

    from nndeploy.oracle import run_model
    from nndeploy.targets.build.codegen import compile_module
    from nndeploy.targets.build.tuned import schedule_untuned
    from nndeploy.targets.devices.registry import device_from_profile, load_profiles
    from nndeploy.targets.tuning.tuner import tuning_module

    model = build_model()
    device = device_from_profile(load_profiles()["x86-avx2-server"], "server")
    mod = schedule_untuned(tuning_module(model, device), device)
    functions = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert functions and all(f.attrs["tirx.is_scheduled"] for f in functions)
    executable = compile_module(mod, tvm.target.Target(device.tvm_target), "default")
    assert "TVMBackendParallelLaunch" in executable.mod.imports[0].inspect_source("ll")
    if not avx2_host():
        pytest.skip("this CPU cannot run the AVX2 build")
    feeds = random_inputs(model)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()])
    expected = next(iter(run_model(model, feeds).values()))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_weight_rewrites_are_computed_once_at_compile_time() -> None:
    """TIR calls on constants (chained ones too) become constants holding their results; calls on the
    input stay."""
    import tvm
    from tvm import relax, topi

    from nndeploy.targets.build.tuned import fold_constant_calls

    weight = np.arange(12, dtype=np.float32).reshape(3, 4)
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([4, 3], "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            once = builder.emit(builder.call_te(topi.transpose, relax.const(weight), [1, 0]))
            twice = builder.emit(builder.call_te(topi.add, once, relax.const(np.float32(1.0))))
            out = builder.emit_output(builder.call_te(topi.add, x, twice))
        builder.emit_func_output(out)
    folded = fold_constant_calls(builder.get())
    calls = [
        b.value
        for block in folded["main"].body.blocks
        for b in block.bindings
        if isinstance(b.value, relax.Call)
    ]
    assert len(calls) == 1  # only x + (weight.T + 1) is left
    constant = next(a for a in calls[0].args[1].fields if isinstance(a, tvm.ir.Constant))
    np.testing.assert_array_equal(constant.value.numpy(), weight.T + 1)


def test_weight_packing_is_computed_with_numpy_without_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    """A layout rewrite that packs output channels by 8 (the index arithmetic MetaSchedule's records use)
    is evaluated without building a TIR library, and gives what the packing means."""
    import tvm
    from tvm import relax
    from tvm.script import tirx as T

    from nndeploy.targets.build import tuned as tuned_build

    @T.prim_func(private=True, s_tir=True)
    def pack(w: T.Buffer((16, 3), "float32"), packed: T.Buffer((2, 3, 8), "float32")) -> None:
        for o, i in T.grid(16, 3):
            with T.sblock("pack"):
                vo, vi = T.axis.remap("SS", [o, i])
                packed[vo // 8, vi, vo % 8] = w[vo, vi]

    weight = np.arange(48, dtype=np.float32).reshape(16, 3)
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([2, 3, 8], "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            function = builder.add_func(pack, "pack")
            packed = builder.emit(
                relax.call_tir(function, [relax.const(weight)], relax.TensorType([2, 3, 8], "float32"))
            )
            out = builder.emit_output(relax.op.add(x, packed))
        builder.emit_func_output(out)

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("a pure layout rewrite was compiled")

    monkeypatch.setattr(tvm.tirx, "build", no_build)
    folded = tuned_build.fold_constant_calls(builder.get())
    constants = [
        a
        for block in folded["main"].body.blocks
        for b in block.bindings
        for a in getattr(b.value, "args", [])
        if isinstance(a, tvm.ir.Constant)
    ]
    assert len(constants) == 1
    np.testing.assert_array_equal(constants[0].value.numpy(), weight.reshape(2, 8, 3).transpose(0, 2, 1))


def _damaged_copies(tmp_path: Path) -> dict[str, Path]:
    """Copies of the shipped database: one cut off mid-record (an interrupted copy), one whose records
    hold traces TVM cannot read (another TVM version's format)."""
    shipped = Path(__file__).parents[3] / "examples" / "tuning"
    copies = {}
    for kind in ("truncated", "foreign"):
        copy = tmp_path / kind
        shutil.copytree(shipped, copy)
        records = next(copy.rglob(tuning_db.RECORDS))
        text = records.read_text()
        if kind == "truncated":
            records.write_text(text[: len(text) // 2])
        else:
            bogus = [[["NoSuchInstruction", [], [], []]], []]  # a trace: instructions, decisions
            records.write_text(
                "".join(
                    json.dumps([index, [bogus, *record[1:]]]) + "\n"
                    for index, record in (json.loads(line) for line in text.splitlines() if line.strip())
                )
            )
        copies[kind] = copy
    return copies


@pytest.mark.slow
def test_a_database_that_cannot_be_applied_gives_an_untuned_build_and_one_warning(
    example_models, tmp_path: Path
) -> None:
    plan = tmp_path / "plan.json"
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("devices:\n  - {name: server, profile: x86-avx512-server}\n")
    assert nndeploy("plan", example_models["camera_cnn"], "--cluster", cluster, "-o", plan).returncode == 0
    for kind, db in _damaged_copies(tmp_path).items():
        build = tmp_path / f"build-{kind}"
        done = nndeploy("compile", plan, "-o", build, "--db", db, env={"COLUMNS": "400"})
        assert done.returncode == 0, done.stdout + done.stderr
        warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1 and "stage 0 is built untuned: the tuning database" in warnings[0], warnings
        assert ("damaged" if kind == "truncated" else "cannot be applied") in warnings[0]
        assert "Traceback" not in done.stdout + done.stderr
        options = json.loads((build / "manifest.json").read_text())["stages"][0]["artifact"]["options"]
        assert options["pipeline"] == "llvm-default"
        assert options["untuned_because"] == warnings[0].split(": ", 2)[2]
        verified = nndeploy("verify", build, "--samples", "1")
        assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.slow
def test_a_tasks_first_batch_is_random_replay_and_later_ones_the_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FIRST_BATCH_SEARCH = "replay": a task never measured, with no tuned workload of its kind to transfer
    from (the shipped knowledge is off here), gets random samples of its design space (no evolutionary
    search, whose cost model knows least then); its next batches come from the search."""
    from tvm.s_tir import meta_schedule as ms

    from nndeploy.targets.devices.registry import device_from_profile, load_profiles
    from nndeploy.targets.tuning import tuner
    from nndeploy.targets.tuning.shipped import SWITCH_ENV

    monkeypatch.setenv(SWITCH_ENV, "0")

    assert tuner.FIRST_BATCH_SEARCH == "replay"
    real = ms.relax_integration.extracted_tasks_to_tune_contexts
    strategies: list[tuple[int, str]] = []

    def spy(tasks, work_dir, strategy, **kwargs):  # type: ignore[no-untyped-def]
        strategies.append((len(tasks), type(strategy).__name__))
        return real(tasks, work_dir, strategy=strategy, **kwargs)

    monkeypatch.setattr(ms.relax_integration, "extracted_tasks_to_tune_contexts", spy)
    server = device_from_profile(load_profiles()["x86-avx512-server"], "server")
    db = tmp_path / "db"
    folder = tuning_db.target_db_dir(db, server.tvm_target)
    tasks = tuner.extract_tasks([(1, conv_model())], server, folder)
    heaviest = max(tasks, key=lambda t: t.weight * t.flops)
    first = tuner.tune_tasks([heaviest], server, folder, budget_s=0.1, trials_per_task=64)
    assert 0 < first <= tuner.FIRST_BATCH
    assert strategies == [(1, "EvolutionarySearch"), (1, "ReplayTrace")]
    strategies.clear()
    again = tuner.extract_tasks([(1, conv_model())], server, folder)
    task = next(t for t in again if t.workload == heaviest.workload)
    assert task.trials_done == first
    tuner.tune_tasks([task], server, folder, budget_s=0.1, trials_per_task=first + 8)
    assert strategies == [(1, "EvolutionarySearch")]  # contexts made once; no replay for a measured task
