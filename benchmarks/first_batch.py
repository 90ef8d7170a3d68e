"""How a tuning task's first batch is chosen, side by side: random replay of its design space against the
evolutionary search, on a held-out model, with the same budget (one fresh database and build cache each).

    python benchmarks/first_batch.py                       # small_detector, 3 minutes per way
    python benchmarks/first_batch.py --budget 600 --ways replay,evolutionary

Each way runs in a process of its own (targets/tuning/tuner.py's FIRST_BATCH_SEARCH set there): plan the
model on one x86 server, tune_plan for --budget seconds, compile_plan with the database into a fresh build
cache, then time the tuned stage and onnxruntime on it (2 threads each, one run of each in turn, median of
--repeats: benchmarks/tuning.py's time_side_by_side). Prints trials, trials
a minute, tasks reached, the tuned stage's milliseconds and onnxruntime's. Use the tuned milliseconds to
compare ways: both runtimes share one process, so onnxruntime's figure moves with the TVM thread pool.
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

import held_out  # the script's folder is on sys.path
import tuning  # benchmarks/tuning.py: the host profile, a fresh compile, side-by-side timing


def run_way(way: str, budget: float, repeats: int) -> dict[str, object]:
    """One way, in this process: returns its figures."""
    os.environ.setdefault("TVM_NUM_THREADS", "2")
    import nndeploy.targets.tuning.tuner as tuner
    from nndeploy.cli.common import write_stage_models
    from nndeploy.graph import load_graph
    from nndeploy.partitioner.planner import plan as make_plan
    from nndeploy.planfile import write_plan
    from nndeploy.targets.devices.cluster import parse_cluster
    from nndeploy.targets.tune import tune_plan
    from nndeploy.targets.tuning.database import target_db_dir, trials_per_workload

    tuner.FIRST_BATCH_SEARCH = way
    work = Path(tempfile.mkdtemp(prefix=f"first-batch-{way}-"))
    model = held_out.write("small_detector", work)
    devices = [{"name": "server", "profile": tuning.host_profile()}]
    the_plan = make_plan(load_graph(model), parse_cluster({"devices": devices}, "c.yaml", work))
    write_plan(the_plan, work / "plan.json")
    _, stages = write_stage_models(the_plan, work / "plan.json", work / "stages", None)
    started = time.perf_counter()
    report = tune_plan(the_plan, stages, work / "db", budget, trials_per_task=256)
    tuned_s = time.perf_counter() - started
    manifest, _ = tuning.fresh_compile(the_plan, stages, work / "build", work / "db")
    entry = manifest.stages[0]
    timed = tuning.time_side_by_side({"tuned": (work / "build", entry)}, stages[0], 2, repeats)
    device = the_plan.cluster.device(entry.device)
    tasks = len(trials_per_workload(target_db_dir(work / "db", device.tvm_target)))
    return {
        "way": way,
        "tune_s": round(tuned_s, 1),
        "trials": report.trials,
        "trials_per_min": round(report.trials / tuned_s * 60, 1),
        "tasks_reached": tasks,
        "tuned_ms": round(timed["tuned"], 2),
        "onnxruntime_ms": round(timed["onnxruntime"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", type=float, default=180.0, help="tuning seconds per way")
    parser.add_argument("--ways", default="replay,evolutionary")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_way(args.one, args.budget, args.repeats)))
        return
    rows = []
    for way in args.ways.split(","):
        command = [sys.executable, __file__, "--one", way, "--budget", str(args.budget)]
        done = subprocess.run([*command, "--repeats", str(args.repeats)], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{way}: {(done.stderr.strip().splitlines() or ['failed'])[-1]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    columns = list(rows[0])
    print("  ".join(f"{c:>14}" for c in columns))
    for row in rows:
        print("  ".join(f"{row[c]!s:>14}" for c in columns))


if __name__ == "__main__":
    main()
