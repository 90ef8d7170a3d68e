"""Plan, cut, compile, verify and time a set of models on a mixed x86 + Raspberry Pi 5 + T4 cluster.

    python benchmarks/compile_verify.py                               # every model below
    python benchmarks/compile_verify.py --models squeezenet,camera_cnn --repeats 5
    python benchmarks/compile_verify.py --json results.json --out build/ --jobs 2 --threads 2
    python benchmarks/compile_verify.py --objective latency --gbps 1 --latency-ms 0.2 --keep

Models: the model-zoo files inside the onnx wheel (onnx/backend/test/data/light/light_<name>.onnx for
squeezenet, shufflenet, inception_v1, resnet50, densenet121, bvlc_alexnet, zfnet512, inception_v2, vgg19)
and the two examples built by examples/build_models.py: camera_cnn and tiny_bert (its input_ids and
attention_mask bound to BATCHx128, --batch and --seq-len).

For each model, only through nndeploy's own functions:

1. plan it (load_graph, restrict_to_compiler, plan) on a cluster of one x86-avx512-server ("server"), one
   raspberry-pi-5 ("pi") and one nvidia-t4 ("gpu"), every pair joined by --gbps/--latency-ms links; requests
   arrive at the Pi and results go to the server;
2. cut it (write_stage_models) and build every stage with TVM (compile_plan, --jobs in parallel) into
   <out>/<model>/ (out: --out, else a temporary folder removed at the end unless --keep);
3. verify every stage and the whole chain against onnxruntime (verify_build). aarch64 stages run under the
   qemu emulator when `nndeploy emulator setup aarch64` was done (find_emulator), CUDA stages only where
   there is a GPU; the others show 'not run' with the reason;
4. time every x86 stage: the TVM artifact (run_artifact, one timed run per call) against onnxruntime on the
   stage's ONNX model (oracle.session), both with --threads threads, in this process, alternating one run
   of each, median of --repeats after --warmup runs of each; prints the ratio TVM / onnxruntime. Like
   run_artifact does for TVM, each timed onnxruntime run follows an untimed one: a thread pool left idle
   by the other runtime's (long) run would otherwise be timed waking up.

TVM reads its thread count from TVM_NUM_THREADS once, when its runtime starts, so this script sets it from
--threads before anything imports TVM. Build times include the content cache shared by all builds
(~/.cache/nndeploy/builds): a cached stage is marked. A model that fails anywhere is reported in one line
and the run moves on. Ends with one table (and --json with everything). Exit status 1 when a model failed,
a stage did not build or a check FAILed; 2 when the cluster itself is invalid (e.g. --gbps 0).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx
from compile_verify_report import results_table
from rich.console import Console

from nndeploy.cli.common import write_stage_models
from nndeploy.graph import load_graph
from nndeploy.oracle import random_inputs, run_chain, session
from nndeploy.partitioner.planner import plan as make_plan
from nndeploy.planfile import write_plan
from nndeploy.targets.artifacts.emulator import find_emulator
from nndeploy.targets.artifacts.loader import run_artifact, why_not_runnable
from nndeploy.targets.compile import compile_plan
from nndeploy.targets.devices.cluster import parse_cluster
from nndeploy.targets.frontend.ops import restrict_to_compiler
from nndeploy.targets.verify import verify_build

DEFAULT_THREADS = 2


def _threads_from_argv(argv: list[str]) -> str:
    """--threads N / --threads=N from the raw command line (argparse validates it properly later)."""
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return str(DEFAULT_THREADS)


# Must happen before TVM is imported (nothing imported above imports it; the check below makes sure).
if __name__ == "__main__":
    if "tvm" in sys.modules:  # pragma: no cover - would mean an import above started TVM's runtime
        raise SystemExit("internal error: TVM was imported before TVM_NUM_THREADS could be set")
    os.environ["TVM_NUM_THREADS"] = _threads_from_argv(sys.argv[1:])

ZOO = (
    "squeezenet",
    "shufflenet",
    "inception_v1",
    "resnet50",
    "densenet121",
    "bvlc_alexnet",
    "zfnet512",
    "inception_v2",
    "vgg19",
)
EXAMPLES = ("camera_cnn", "tiny_bert")
ALL_MODELS = (*ZOO, *EXAMPLES)
ZOO_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
BUILD_MODELS = Path(__file__).resolve().parent.parent / "examples" / "build_models.py"

err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)


@dataclass(frozen=True)
class Options:
    """What the command line asked for."""

    objective: str
    gbps: float
    latency_ms: float
    jobs: int
    threads: int
    repeats: int
    warmup: int
    samples: int
    batch: int
    seq_len: int


def cluster_data(gbps: float, latency_ms: float) -> dict[str, Any]:
    """The mixed cluster as a cluster.yaml document."""
    return {
        "name": "mixed-x86-pi-t4",
        "devices": [
            {"name": "server", "profile": "x86-avx512-server"},
            {"name": "pi", "profile": "raspberry-pi-5"},
            {"name": "gpu", "profile": "nvidia-t4"},
        ],
        "default_link": {"gbps": gbps, "latency_ms": latency_ms},
        "input_at": "pi",
        "output_to": "server",
    }


def model_file(name: str, folder: Path) -> Path:
    """The model's ONNX file: the zoo file, or the example built now by examples/build_models.py."""
    if name in ZOO:
        path = ZOO_DIR / f"light_{name}.onnx"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not in this onnx wheel")
        return path
    spec = importlib.util.spec_from_file_location("nndeploy_example_models", BUILD_MODELS)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{BUILD_MODELS}: cannot load")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = folder / f"{name}.onnx"
    onnx.save(getattr(module, name)(), str(path))
    return path


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text}"


def _is_x86(entry: Any) -> bool:
    return entry.device_arch == "x86_64"


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def time_stage(
    build_dir: Path, entry: Any, stage_model: Path, tensors: dict, opts: Options
) -> dict[str, Any]:
    """TVM artifact vs onnxruntime on one stage, same threads, alternating runs; medians in ms."""
    reason = why_not_runnable(entry)
    if reason is not None:
        return {"stage": entry.stage, "status": "not run", "reason": reason}
    assert entry.artifact is not None
    feed = {spec.name: tensors[spec.name] for spec in entry.artifact.inputs}
    sess = session(str(stage_model), opts.threads)
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    ort_feed = {k: v for k, v in feed.items() if k in wanted}

    def tvm_once() -> float:  # run_artifact runs once untimed, then times `repeats` runs
        _, times = run_artifact(build_dir, entry, feed, repeats=1)
        return times[0]

    def ort_once() -> float:  # the same for onnxruntime: one untimed run (wakes its thread pool), one timed
        sess.run(names, ort_feed)
        started = time.perf_counter()
        sess.run(names, ort_feed)
        return (time.perf_counter() - started) * 1e3

    for _ in range(opts.warmup):
        tvm_once()
        ort_once()
    tvm_ms: list[float] = []
    ort_ms: list[float] = []
    for _ in range(opts.repeats):
        tvm_ms.append(tvm_once())
        ort_ms.append(ort_once())
    tvm, ort = _median(tvm_ms), _median(ort_ms)
    return {
        "stage": entry.stage,
        "device": entry.device,
        "status": "timed",
        "tvm_ms": tvm,
        "ort_ms": ort,
        "ratio": tvm / ort if tvm and ort else None,
        "tvm_runs_ms": tvm_ms,
        "ort_runs_ms": ort_ms,
    }


def check_dict(check: Any) -> dict[str, Any]:
    """A verify Check as JSON."""
    return {
        "name": check.name,
        "device": check.device,
        "executor": check.executor,
        "status": check.status,
        "reason": check.reason,
        "max_abs": max((c.max_abs for c in check.comparisons), default=None),
        "comparisons": [
            {
                "output": c.name,
                "max_abs": c.max_abs,
                "max_rel": c.max_rel,
                "atol": c.atol,
                "rtol": c.rtol,
                "ok": c.ok,
            }
            for c in check.comparisons
        ],
    }


def run_one(name: str, root: Path, cluster: Any, opts: Options) -> dict[str, Any]:
    """Every step for one model; fills the result as it goes, so a failure keeps what came before."""
    result: dict[str, Any] = {"model": name, "error": None, "phase": "prepare"}
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        path = model_file(name, folder)
        result["path"] = str(path)
        shapes = {}
        if name == "tiny_bert":
            shapes = {"input_ids": (opts.batch, opts.seq_len), "attention_mask": (opts.batch, opts.seq_len)}
        result["input_shapes"] = {k: list(v) for k, v in shapes.items()}

        result["phase"] = "plan"
        err.print(f"[bold]{name}[/]: planning ({opts.objective})")
        graph = load_graph(path, shapes or None, None)
        plan = make_plan(graph, cluster, opts.objective)
        ops = {node.name: node.op_type for node in graph.nodes}
        result["nodes"] = len(graph.nodes)
        result["stages"] = [
            {
                "index": s.index,
                "device": s.device,
                "profile": plan.cluster.device(s.device).profile,
                "ops": len(s.nodes),
                "first_op": f"{s.nodes[0]} ({ops.get(s.nodes[0], '?')})",
                "last_op": f"{s.nodes[-1]} ({ops.get(s.nodes[-1], '?')})",
                "predicted_compute_ms": s.compute_ms,
                "predicted_transfer_ms": s.transfer_ms,
            }
            for s in plan.stages
        ]
        result["devices_used"] = sorted({s.device for s in plan.stages})
        result["predicted"] = {
            "latency_ms": plan.latency_ms,
            "throughput_per_s": plan.throughput_per_s,
            "bottleneck": plan.bottleneck,
        }
        result["plan_seconds"] = plan.planner_seconds
        err.print(
            f"  {len(graph.nodes)} nodes -> "
            + ", ".join(f"{s['index']} {s['device']}:{s['ops']}" for s in result["stages"])
        )

        result["phase"] = "split"
        plan_file = write_plan(plan, folder / "plan.json")
        model_path, stage_models = write_stage_models(plan, plan_file, folder / "stages", path)

        result["phase"] = "compile"
        err.print(f"  compiling {len(stage_models)} stage(s), {opts.jobs} job(s)")
        build_started = time.perf_counter()

        def done(record: Any) -> None:
            state = "FAILED" if record.error else "cached" if record.cached else f"{record.seconds:.1f} s"
            err.print(f"    stage {record.stage} on {record.device}: {state}")

        manifest = compile_plan(
            plan,
            "plan.json",
            stage_models,
            folder,
            opts.jobs,
            None,
            done,
            model_path=str(model_path.resolve()),
        )
        result["build_seconds"] = time.perf_counter() - build_started
        result["builds"] = [
            {
                "stage": e.stage,
                "device": e.device,
                "arch": e.device_arch,
                "built": e.artifact is not None,
                "cached": e.cached,
                "seconds": e.build_seconds,
                "error": e.error,
            }
            for e in manifest.stages
        ]
        for e in manifest.stages:
            if e.artifact is None:
                err.print(f"    [red]stage {e.stage} build failed:[/] {e.error}")

        result["phase"] = "verify"
        err.print(f"  verifying ({opts.samples} input set(s))")
        report = verify_build(folder, manifest, stage_models, model_path, plan.inputs, opts.samples)
        result["verify"] = {
            "stages": [check_dict(c) for c in report.stages],
            "end_to_end": check_dict(report.end_to_end),
        }
        for c in (*report.stages, report.end_to_end):
            worst = max((x.max_abs for x in c.comparisons), default=None)
            extra = f" max abs {worst:.3g}" if worst is not None else f" ({c.reason})"
            err.print(f"    {c.name} on {c.device}: {c.status}{extra}")

        result["phase"] = "time"
        x86 = [e for e in manifest.stages if _is_x86(e)]
        result["timing"] = []
        if x86:
            tensors = run_chain([str(p) for p in stage_models], random_inputs(plan.inputs, seed=0))
            for entry in x86:
                err.print(f"  timing stage {entry.stage} ({opts.repeats} alternating runs each)")
                try:
                    timing = time_stage(folder, entry, stage_models[entry.stage], tensors, opts)
                except Exception as exc:
                    timing = {"stage": entry.stage, "status": "error", "reason": _one_line(exc)}
                if timing.get("status") == "timed":
                    err.print(
                        f"    TVM {timing['tvm_ms']:.2f} ms, onnxruntime {timing['ort_ms']:.2f} ms, "
                        f"ratio {timing['ratio']:.1f}"
                    )
                else:
                    err.print(f"    {timing['status']}: {timing.get('reason')}")
                result["timing"].append(timing)
        result["phase"] = "done"
    except Exception as exc:
        result["error"] = _one_line(exc)
        result["traceback"] = traceback.format_exc()
        err.print(f"  [red]{name} failed during {result['phase']}:[/] {result['error']}")
    result["seconds"] = time.perf_counter() - started
    return result


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", help=f"comma-separated subset of: {', '.join(ALL_MODELS)}")
    parser.add_argument("--objective", choices=("throughput", "latency"), default="throughput")
    parser.add_argument("--gbps", type=float, default=10.0, help="bandwidth of every link (default 10)")
    parser.add_argument("--latency-ms", type=float, default=0.05, help="latency of every link (default 0.05)")
    parser.add_argument("--jobs", type=int, default=2, help="stages built in parallel (default 2)")
    parser.add_argument(
        "--threads", type=int, default=DEFAULT_THREADS, help="TVM and onnxruntime threads (default 2)"
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of each (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs of each first (default 2)")
    parser.add_argument("--samples", type=int, default=1, help="input sets verify checks (default 1)")
    parser.add_argument("--batch", type=int, default=1, help="tiny_bert batch (default 1)")
    parser.add_argument("--seq-len", type=int, default=128, help="tiny_bert sequence length (default 128)")
    parser.add_argument("--out", type=Path, help="build folder (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary build folder")
    parser.add_argument("--json", type=Path, help="also write every result here")
    args = parser.parse_args(argv)
    for flag in ("jobs", "threads", "repeats", "samples", "batch", "seq_len"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    if args.models:
        args.models = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in args.models if m not in ALL_MODELS]
        if unknown:
            parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(ALL_MODELS)}")
    else:
        args.models = list(ALL_MODELS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.environ.get("TVM_NUM_THREADS") != str(args.threads):
        if "tvm" in sys.modules:
            raise SystemExit("TVM is already imported: run this file as a script to set its thread count")
        os.environ["TVM_NUM_THREADS"] = str(args.threads)
    opts = Options(
        objective=args.objective,
        gbps=args.gbps,
        latency_ms=args.latency_ms,
        jobs=args.jobs,
        threads=args.threads,
        repeats=args.repeats,
        warmup=args.warmup,
        samples=args.samples,
        batch=args.batch,
        seq_len=args.seq_len,
    )
    wall = time.perf_counter()
    root = args.out or Path(tempfile.mkdtemp(prefix="nndeploy-compile-verify-"))
    root.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    emulator = None
    try:
        try:
            cluster = restrict_to_compiler(
                parse_cluster(cluster_data(args.gbps, args.latency_ms), "mixed-cluster", Path.cwd())
            )
        except Exception as exc:
            err.print(f"[red]error:[/] the cluster: {_one_line(exc)}")
            return 2
        emulator = find_emulator("aarch64")
        if emulator is None:
            err.print(
                "[yellow]note:[/] the aarch64 emulator is not set up (nndeploy emulator setup aarch64): "
                "aarch64 stages will show 'not run'"
            )
        else:
            err.print(f"aarch64 emulator ready: {emulator.qemu}, environment in {emulator.root.parent}")
        err.print(f"building into {root}; TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']}")
        for name in args.models:
            results.append(run_one(name, root, cluster, opts))
    finally:
        total = time.perf_counter() - wall
        if results:
            out = Console(width=None if sys.stdout.isatty() else 220, highlight=False)
            out.print(results_table(results, opts))
            notes = sorted(
                {
                    c["reason"]
                    for r in results
                    for c in (*r.get("verify", {}).get("stages", []), r.get("verify", {}).get("end_to_end"))
                    if c and c.get("reason")
                }
            )
            for note in notes:
                out.print(f"not run: {note}")
            for r in results:
                if r["error"]:
                    out.print(f"[red]FAILED[/] {r['model']} during {r['phase']}: {r['error']}")
                for b in r.get("builds", []):
                    if b["error"]:
                        out.print(f"[red]build failed[/] {r['model']} stage {b['stage']}: {b['error']}")
                for t in r.get("timing", []):
                    if t["status"] != "timed":
                        out.print(f"not timed: {r['model']} stage {t['stage']}: {t.get('reason')}")
            out.print(f"total wall time: {total:.1f} s ({len(results)} model(s))")
        if args.json:
            document = {
                "cluster": cluster_data(args.gbps, args.latency_ms),
                "options": asdict(opts),
                "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": sys.version},
                "tvm_num_threads": os.environ.get("TVM_NUM_THREADS"),
                "emulator": str(emulator.root.parent) if emulator else None,
                "build_root": str(root),
                "total_seconds": total,
                "results": results,
            }
            args.json.write_text(json.dumps(document, indent=1, default=str) + "\n", encoding="utf-8")
            print(f"results written to {args.json}")
        if args.out is None and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        elif results:
            print(f"builds kept in {root}")
    return 1 if any(_had_problem(r) for r in results) else 0


def _had_problem(r: dict[str, Any]) -> bool:
    """A model failed, a stage failed to build, or something that ran disagreed with onnxruntime."""
    verify = r.get("verify", {})
    checks = [*verify.get("stages", []), *([verify["end_to_end"]] if "end_to_end" in verify else [])]
    return bool(
        r["error"]
        or any(not b["built"] for b in r.get("builds", []))
        or any(c["status"] == "FAIL" for c in checks)
    )


if __name__ == "__main__":
    sys.exit(main())
