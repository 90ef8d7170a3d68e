"""Tuned TVM stages against onnxruntime and against untuned TVM, at stated tuning budgets, in one run.

    python benchmarks/tuning.py                                   # resnet50, tiny_bert, small_unet at 5m
    python benchmarks/tuning.py --models resnet50 --budgets 5m,30m --db bench-tuning --json out.json

For each model, only through nndeploy's own functions:
1. plan it on one CPU server (x86-avx512-server where this CPU has AVX-512, else x86-avx2-server) and cut
   the one stage (write_stage_models);
2. compile it untuned into a fresh build cache (compile_plan), timing the compile;
3. for each budget (cumulative: "5m,30m" tunes 5 minutes, measures, then tunes 25 more): tune (tune_plan
   into --db, shared by the models), compile with the database into a fresh cache, timing it and checking
   that the database did not change (the compile ran no trials), then time the tuned artifact, the untuned
   one and onnxruntime on the stage model with --threads threads, interleaved, one run of each in turn,
   median of --repeats; print TVM / onnxruntime ratios, and per op family the tuned artifact's own kernel
   times (every VM call timed through the VM's instrument hook) against onnxruntime's profiler (per node,
   summed), worst ratio first. "alone": the tuned artifact and onnxruntime again, each timed in a fresh
   process of its own (alternating, 9 rounds of 10 runs): no other runtime's thread pool shares the process.

TVM_NUM_THREADS is set from --threads before TVM loads, so both runtimes use the same thread count.
Models: resnet50 is the onnx wheel's light_resnet50.onnx; tiny_bert (input 1x128) and small_unet come from
examples/build_models.py (built if missing); small_detector (a YOLO-style detector at 320x320) from
benchmarks/held_out.py, never tuned into a shipped database.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import held_out  # the script's folder is on sys.path

if TYPE_CHECKING:
    from nndeploy.targets.artifacts.manifest import Manifest, StageBuild
    from nndeploy.types import Plan

ROOT = Path(__file__).resolve().parents[1]


def model_file(name: str) -> tuple[Path, dict[str, tuple[int, ...]]]:
    """The model's path and the input shapes it is planned with."""
    if name == "resnet50":
        import onnx

        light = Path(onnx.__file__).parent / "backend/test/data/light/light_resnet50.onnx"
        return light, {}
    if name in held_out.MODELS:  # built here, never part of a tuning database
        return held_out.write(name, Path(tempfile.gettempdir()) / "nndeploy-held-out"), {}
    path = ROOT / "examples/models" / f"{name}.onnx"
    if not path.is_file():
        subprocess.run([sys.executable, str(ROOT / "examples/build_models.py")], check=True)
    if name == "tiny_bert":
        return path, {"input_ids": (1, 128), "attention_mask": (1, 128)}
    return path, {}


def host_profile() -> str:
    """The x86 server profile whose code this CPU can run."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return "x86-avx512-server" if "avx512f" in flags else "x86-avx2-server"


def fresh_compile(
    plan: Plan, stage_models: list[Path], out_dir: Path, db: Path | None, best_of: bool = False
) -> tuple[Manifest, float]:
    """compile_plan into `out_dir` with an empty build cache (pure TVM unless `best_of`); returns
    (manifest, seconds)."""
    from nndeploy.targets.compile import compile_plan

    with tempfile.TemporaryDirectory(prefix="bench-cache-") as cache:
        os.environ["NNDEPLOY_CACHE_DIR"] = cache
        started = time.perf_counter()
        manifest = compile_plan(plan, "plan.json", stage_models, out_dir, tuning_db_root=db, best_of=best_of)
        seconds = time.perf_counter() - started
    os.environ.pop("NNDEPLOY_CACHE_DIR")
    if not manifest.ok:
        raise SystemExit(f"build failed: {[s.error for s in manifest.stages]}")
    return manifest, seconds


def time_side_by_side(
    builds: dict[str, tuple[Path, StageBuild]], stage_model: Path, threads: int, repeats: int
) -> dict[str, float]:
    """Median ms of each build and of onnxruntime, one run of each in turn."""
    import numpy as np

    from nndeploy.oracle import random_inputs, session
    from nndeploy.targets.artifacts.loader import run_artifact

    first = next(iter(builds.values()))[1].artifact
    feed = random_inputs(first.inputs, 0)
    sess = session(str(stage_model), threads)
    wanted = {i.name for i in sess.get_inputs()}
    ort_feed = {k: v for k, v in feed.items() if k in wanted}
    times: dict[str, list[float]] = {name: [] for name in [*builds, "onnxruntime"]}
    expected = sess.run(None, ort_feed)
    for name, (folder, entry) in builds.items():
        got, _ = run_artifact(folder, entry, feed)
        error = max(float(np.max(np.abs(g - e))) for g, e in zip(got.values(), expected, strict=True))
        times[f"{name} max abs error vs onnxruntime"] = [error]
    for _ in range(repeats):
        for name, (folder, entry) in builds.items():
            times[name].extend(run_artifact(folder, entry, feed, repeats=1)[1])
        sess.run(None, ort_feed)  # an untimed run first: wake onnxruntime's threads
        started = time.perf_counter()
        sess.run(None, ort_feed)
        times["onnxruntime"].append((time.perf_counter() - started) * 1e3)
    return {name: float(np.median(t)) for name, t in times.items()}


def time_isolated(
    builds: dict[str, tuple[Path, StageBuild]],
    stage_model: Path,
    threads: int,
    rounds: int = 9,
    runs: int = 10,
) -> dict[str, float]:
    """Median ms of each build and of onnxruntime, each timed alone in a fresh process (no other runtime's
    thread pool in the process), the processes alternating; median over rounds of each one's median.
    Many rounds, because a process's buffer addresses move its kernels' speed: resnet50's max pool took
    0.03 or 0.14 ms on the same data depending on where its input lay."""
    import numpy as np

    jobs = {name: ["--time-one", str(folder), str(entry.stage)] for name, (folder, entry) in builds.items()}
    jobs["onnxruntime"] = ["--time-ort", str(stage_model)]
    found: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, job in jobs.items():
            done = subprocess.run(
                [sys.executable, __file__, *job, "--threads", str(threads), "--repeats", str(runs)],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "TVM_NUM_THREADS": str(threads)},
            )
            found[name].append(float(done.stdout.strip().splitlines()[-1]))
    return {name: float(np.median(values)) for name, values in found.items()}


def _time_one(build_dir: Path, stage: int, runs: int) -> float:
    """Median ms of one built stage, alone in this process."""
    import numpy as np

    from nndeploy.oracle import random_inputs
    from nndeploy.targets.artifacts.loader import run_artifact
    from nndeploy.targets.artifacts.manifest import read_manifest

    entry = read_manifest(build_dir).stages[stage]
    assert entry.artifact is not None
    feed = random_inputs(entry.artifact.inputs, 0)
    return float(np.median(run_artifact(build_dir, entry, feed, repeats=runs + 2)[1][2:]))


def _time_ort(stage_model: Path, threads: int, runs: int) -> float:
    """Median ms of onnxruntime on a stage model, alone in this process."""
    import numpy as np

    from nndeploy.oracle import random_inputs, session
    from nndeploy.types import TensorSpec

    sess = session(str(stage_model), threads)
    specs = tuple(
        TensorSpec(i.name, tuple(i.shape), "int64" if "int64" in i.type else "float32")
        for i in sess.get_inputs()
    )
    feed = random_inputs(specs, 0)
    for _ in range(3):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - started) * 1e3)
    return float(np.median(times))


def bytecode_twin(
    plan: Plan, stage_models: list[Path], folder: Path, budget: float, db: Path
) -> tuple[Path, StageBuild]:
    """The tuned build made again with the VM's control code interpreted (the same kernels): only the
    interpreter reports each kernel call to an instrument."""
    os.environ["NNDEPLOY_VM_EXEC_MODE"] = "bytecode"
    try:
        build_dir = folder / f"tuned_{int(budget)}_bytecode"
        manifest, _ = fresh_compile(plan, stage_models, build_dir, db)
    finally:
        os.environ.pop("NNDEPLOY_VM_EXEC_MODE")
    return build_dir, manifest.stages[0]


def run_model(
    name: str, budgets: list[float], db: Path, threads: int, repeats: int, work: Path, already: float = 0.0
) -> dict:
    """Every measurement for one model (see the module docstring)."""
    from nndeploy.cli.common import write_stage_models
    from nndeploy.graph import load_graph
    from nndeploy.partitioner.planner import plan as make_plan
    from nndeploy.planfile import write_plan
    from nndeploy.targets.devices.cluster import parse_cluster
    from nndeploy.targets.tune import tune_plan
    from nndeploy.targets.tuning.database import fingerprint, target_db_dir, trials_per_workload

    path, shapes = model_file(name)
    profile = host_profile()
    cluster = parse_cluster(
        {"name": "one", "devices": [{"name": "server", "profile": profile}]}, "bench", work, ()
    )
    graph = load_graph(path, shapes)
    plan = make_plan(graph, cluster, "latency")
    plan_file = work / name / "plan.json"
    plan_file.parent.mkdir(parents=True, exist_ok=True)
    write_plan(plan, plan_file)
    _, stage_models = write_stage_models(plan, plan_file, work / name / "stages", None)
    device = cluster.devices[0]
    untuned_dir = work / name / "untuned"
    untuned, untuned_s = fresh_compile(plan, stage_models, untuned_dir, None)
    print(f"{name}: untuned compile {untuned_s:.1f} s", flush=True)
    result = {"model": name, "profile": profile, "untuned_compile_s": untuned_s, "checkpoints": []}
    tuned_so_far = already
    for budget in budgets:
        started = time.perf_counter()
        report = tune_plan(plan, stage_models, db, budget - tuned_so_far, trials_per_task=256)
        tuned_so_far = budget
        tune_s = time.perf_counter() - started
        db_dir = target_db_dir(db, device.tvm_target)
        before = fingerprint(db_dir)
        tuned_dir = work / name / f"tuned_{int(budget)}"
        tuned, tuned_s = fresh_compile(plan, stage_models, tuned_dir, db)
        unchanged = fingerprint(db_dir) == before
        measured = time_side_by_side(
            {"tvm-tuned": (tuned_dir, tuned.stages[0]), "tvm-untuned": (untuned_dir, untuned.stages[0])},
            stage_models[0],
            threads,
            repeats,
        )
        counts = trials_per_workload(db_dir)
        checkpoint = {
            "budget_s": budget,
            "tune_wall_s": tune_s,
            "trials_this_run": report.trials,
            "trials_in_db_for_target": sum(counts.values()),
            "tasks": report.targets[0].tasks if report.targets else 0,
            "tasks_weights_cold": report.targets[0].tasks_weights_cold if report.targets else 0,
            "tuned_compile_s": tuned_s,
            "compile_ran_no_trials": unchanged,
            "ms": measured,
            "tuned_over_ort": measured["tvm-tuned"] / measured["onnxruntime"],
            "ms_isolated": (
                isolated := time_isolated(
                    {"tvm-tuned": (tuned_dir, tuned.stages[0])}, stage_models[0], threads
                )
            ),
            "tuned_over_ort_isolated": isolated["tvm-tuned"] / isolated["onnxruntime"],
            "untuned_over_ort": measured["tvm-untuned"] / measured["onnxruntime"],
            **_breakdown(plan, stage_models, work / name, budget, db, threads),
        }
        result["checkpoints"].append(checkpoint)
        print(json.dumps({"model": name, **checkpoint}, indent=1), flush=True)
    return result


def _breakdown(
    plan: Plan, stage_models: list[Path], folder: Path, budget: float, db: Path, threads: int
) -> dict:
    """Per op family, and the worst convolutions, of the tuned kernels against onnxruntime's nodes."""
    from kernel_profile import (
        ort_ms_by_family,
        ort_nodes_ms,
        tvm_calls_ms,
        tvm_ms_by_family,
        worst_convolutions,
    )

    calls = tvm_calls_ms(*bytecode_twin(plan, stage_models, folder, budget, db))
    nodes = ort_nodes_ms(stage_models[0], threads)
    return {
        "ort_ms_by_family": ort_ms_by_family(nodes),
        "tvm_tuned_ms_by_family": tvm_ms_by_family(calls),
        "worst_convolutions": worst_convolutions(calls, nodes),
    }


def print_summary(results: list[dict]) -> None:
    """One table for every model and budget."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="tuned TVM vs onnxruntime (same threads, medians, one run)")
    for column in (
        "model",
        "budget",
        "trials",
        "tuned ms",
        "untuned ms",
        "onnxruntime ms",
        "tuned/ort",
        "tuned/ort alone",
        "untuned/ort",
        "compile untuned s",
        "compile tuned s",
        "no trials in compile",
    ):
        table.add_column(column, justify="left" if column == "model" else "right")
    for result in results:
        for c in result["checkpoints"]:
            table.add_row(
                result["model"],
                f"{c['budget_s'] / 60:g} min",
                str(c["trials_in_db_for_target"]),
                f"{c['ms']['tvm-tuned']:.2f}",
                f"{c['ms']['tvm-untuned']:.2f}",
                f"{c['ms']['onnxruntime']:.2f}",
                f"{c['tuned_over_ort']:.2f}x",
                f"{c['tuned_over_ort_isolated']:.2f}x",
                f"{c['untuned_over_ort']:.2f}x",
                f"{result['untuned_compile_s']:.1f}",
                f"{c['tuned_compile_s']:.1f}",
                "yes" if c["compile_ran_no_trials"] else "NO",
            )
    console = Console(width=200)
    console.print(table)
    ops = Table(title="per op family at the last budget: tuned TVM kernels vs onnxruntime nodes (ms per run)")
    for column in ("model", "family", "TVM ms", "onnxruntime ms", "TVM/ort"):
        ops.add_column(column, justify="left" if column in ("model", "family") else "right")
    for result in results:
        last = result["checkpoints"][-1]
        tvm_ms, ort_ms = last["tvm_tuned_ms_by_family"], last["ort_ms_by_family"]
        rows = [(f, tvm_ms.get(f, 0.0), ort_ms.get(f, 0.0)) for f in sorted(set(tvm_ms) | set(ort_ms))]
        rows.sort(key=lambda r: -(r[1] / r[2]) if r[2] > 0 else 0.0)
        for family, t, o in rows:
            ratio = f"{t / o:.2f}x" if o > 0 else "-"
            ops.add_row(result["model"], family, f"{t:.3f}", f"{o:.3f}", ratio)
    console.print(ops)
    worst = Table(title="worst convolutions at the last budget: tuned TVM kernel vs onnxruntime node")
    for column in ("model", "TVM kernel", "onnxruntime node", "TVM ms", "onnxruntime ms", "TVM/ort"):
        worst.add_column(column, justify="right" if "ms" in column or "/" in column else "left")
    for result in results:
        for pair in result["checkpoints"][-1].get("worst_convolutions", []):
            worst.add_row(
                result["model"],
                pair["kernel"],
                pair["node"],
                f"{pair['tvm_ms']:.3f}",
                f"{pair['ort_ms']:.3f}",
                f"{pair['ratio']:.2f}x",
            )
    console.print(worst)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="resnet50,tiny_bert,small_unet")
    parser.add_argument("--budgets", default="5m", help="cumulative tuning budgets, e.g. 5m,30m")
    parser.add_argument("--db", type=Path, default=None, help="tuning database (default: a fresh one)")
    parser.add_argument(
        "--tuned-before", default="0", help="tuning time --db already holds for these models (e.g. 5m)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--time-one", nargs=2, metavar=("BUILD", "STAGE"), help=argparse.SUPPRESS)
    parser.add_argument("--time-ort", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    if args.time_one:
        print(_time_one(Path(args.time_one[0]), int(args.time_one[1]), args.repeats))
        return
    if args.time_ort:
        print(_time_ort(args.time_ort, args.threads, args.repeats))
        return
    from nndeploy.cli.tune import parse_duration

    budgets = [parse_duration(b) for b in args.budgets.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-tuning-") as scratch:
        db = args.db or Path(scratch) / "db"
        for name in args.models.split(","):
            already = parse_duration(args.tuned_before)
            results.append(run_model(name, budgets, db, args.threads, args.repeats, Path(scratch), already))
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))
    print_summary(results)


if __name__ == "__main__":
    main()
