"""What nndeploy's compiler does for a model it has never seen, at 0, 5 and 10 minutes of the user's time.

    python benchmarks/new_model.py                                  # held-out models + resnet50, 0/5/10 min
    python benchmarks/new_model.py --models small_detector --budgets 5m,10m --json out.json
    python benchmarks/new_model.py --budgets ""                      # shipped knowledge only (0 minutes)

For each model (benchmarks/held_out.py's, never in the shipped corpus, and resnet50, which is), through
nndeploy's own functions, in one process, with TVM_NUM_THREADS and onnxruntime's threads set to --threads:
1. plan it on one x86 server (benchmarks/tuning.py's host profile) and cut the stage;
2. compile it with TVM's defaults (--no-shipped) and with the shipped knowledge (the default), each into a
   fresh build cache, timing both compiles; the second says how many kernels took a tuned, a transferred
   or the plain schedule;
3. for each budget (cumulative): `tune` into a fresh database for the rest of the budget (its first batches
   are the transferred schedules), then compile with it, and record trials and trials a minute;
4. check each build's outputs against onnxruntime's, then time every build and onnxruntime on the stage's
   random inputs, each alone in a fresh process (`tuning.time_isolated`: no other runtime's thread pool
   in the process; in one process, onnxruntime timed after TVM ran 1.5-1.9x slower), the processes
   alternating, median over 5 rounds of each one's median of --repeats runs (the untuned build: one
   in-process run).
Ratios are TVM time / onnxruntime time for TVM-built code only (no onnxruntime regions, no best-of). The
geometric mean is over the held-out models. Also compiled: compile's default, best-of at 0 minutes (the
regions onnxruntime runs faster go there, the floor users get meanwhile); its line gives what it kept and
the medians its own timing measured (not timed again here: a second onnxruntime session in this process
would slow the reference).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import held_out  # the script's folder is on sys.path
import tuning  # benchmarks/tuning.py: the host profile, models, fresh compiles, side-by-side timing

from nndeploy.cli.tune import parse_duration

ROUNDS = 5


def run_model(name: str, budgets: list[float], threads: int, repeats: int, work: Path) -> dict:
    """Every figure for one model (see the module docstring)."""
    from nndeploy.cli.common import write_stage_models
    from nndeploy.graph import load_graph
    from nndeploy.partitioner.planner import plan as make_plan
    from nndeploy.planfile import write_plan
    from nndeploy.targets.devices.cluster import parse_cluster
    from nndeploy.targets.tune import tune_plan
    from nndeploy.targets.tuning.shipped import SWITCH_ENV

    path, shapes = tuning.model_file(name)
    devices = [{"name": "server", "profile": tuning.host_profile()}]
    cluster = parse_cluster({"name": "one", "devices": devices}, "bench", work, ())
    the_plan = make_plan(load_graph(path, shapes), cluster, "latency")
    plan_file = work / name / "plan.json"
    plan_file.parent.mkdir(parents=True, exist_ok=True)
    write_plan(the_plan, plan_file)
    _, stages = write_stage_models(the_plan, plan_file, work / name / "stages", None)
    result: dict = {"model": name, "held_out": name in held_out.MODELS}
    builds = {}
    for label, shipped in (("untuned", "0"), ("0 min", "1")):
        os.environ[SWITCH_ENV] = shipped
        manifest, seconds = tuning.fresh_compile(the_plan, stages, work / name / label, None)
        builds[label] = (work / name / label, manifest.stages[0])
        result[f"compile_s {label}"] = round(seconds, 1)
        if shipped == "1":
            result["schedules"] = manifest.stages[0].artifact.options.get("schedules")
        print(f"{name}: compile {label} {seconds:.1f} s", flush=True)
    # Best-of's own timing, from its manifest: its build is not timed again below, where a second
    # onnxruntime session in this process would slow the onnxruntime reference (measured: 8.5 -> 13.8 ms).
    manifest, seconds = tuning.fresh_compile(the_plan, stages, work / name / "best-of", None, best_of=True)
    found = manifest.stages[0].artifact.options.get("best_of", {})
    result["compile_s best-of"] = round(seconds, 1)
    result["best_of"] = {"selected": found.get("selected"), "measured_ms": found.get("measured_ms")}
    print(f"{name}: compile with best-of {seconds:.1f} s, kept {found.get('selected')}", flush=True)
    db = work / name / "db"
    spent = 0.0
    for budget in budgets:
        started = time.perf_counter()
        report = tune_plan(the_plan, stages, db, budget - spent, trials_per_task=256)
        tune_s = time.perf_counter() - started
        spent = budget
        label = f"{budget / 60:g} min"
        manifest, _ = tuning.fresh_compile(the_plan, stages, work / name / label, db)
        builds[label] = (work / name / label, manifest.stages[0])
        result[f"trials {label}"] = report.trials
        result[f"trials_per_min {label}"] = round(report.trials / tune_s * 60, 1)
        print(f"{name}: tuned to {label}: {report.trials} trials in {tune_s:.0f} s", flush=True)
    checked = tuning.time_side_by_side(builds, stages[0], threads, 1)  # errors; one run of each
    fast = {label: build for label, build in builds.items() if label != "untuned"}
    timed = tuning.time_isolated(fast, stages[0], threads, rounds=ROUNDS, runs=repeats)
    timed["untuned"] = checked["untuned"]  # 40-100x: one in-process run says enough
    result["ms"] = {k: round(v, 3) for k, v in timed.items()}
    result["max_abs_error"] = {k.split(" max")[0]: v for k, v in checked.items() if "error" in k}
    result["ratio"] = {k: round(timed[k] / timed["onnxruntime"], 2) for k in builds}
    return result


def geometric_mean(values: list[float]) -> float:
    """The geometric mean of positive values."""
    return math.exp(sum(math.log(v) for v in values) / len(values))


def print_table(results: list[dict]) -> None:
    """One line per model, then the held-out geometric means."""
    labels = list(results[0]["ratio"])
    print("\nTVM / onnxruntime (median ms in brackets), TVM-built code only")
    print(f"{'model':18} " + " ".join(f"{label:>18}" for label in labels) + f" {'onnxruntime ms':>15}")
    for r in results:
        cells = " ".join(f"{r['ratio'][k]:>7.2f}x ({r['ms'][k]:>7.1f})" for k in labels)
        name = r["model"] + ("" if r["held_out"] else " *")
        print(f"{name:18} {cells} {r['ms']['onnxruntime']:>15.2f}")
    held = [r for r in results if r["held_out"]]
    if held:
        means = " ".join(f"{geometric_mean([r['ratio'][k] for r in held]):>17.2f}x" for k in labels)
        print(f"{'geomean held-out':18} {means}")
    print("* in the shipped corpus")
    for r in results:
        extra = {k: v for k, v in r.items() if k.startswith(("compile_s", "trials", "schedules", "best_of"))}
        print(f"{r['model']}: {json.dumps(extra)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join([*held_out.MODELS, "resnet50"]))
    parser.add_argument("--budgets", default="5m,10m", help="cumulative tuning budgets; '' for none")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    budgets = [parse_duration(b) for b in args.budgets.split(",") if b.strip()]
    work = Path(tempfile.mkdtemp(prefix="new-model-"))
    results = []
    for name in args.models.split(","):
        results.append(run_model(name, budgets, args.threads, args.repeats, work))
        print(json.dumps(results[-1]), flush=True)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())
