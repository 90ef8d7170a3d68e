"""What serving costs: per-hop transport overhead, pipelining across stages, and the end-to-end overhead of
the chain of stage workers + KServe v2 endpoint over running the same artifacts in one process.

    python benchmarks/serve_bench.py                                  # all three parts, defaults below
    python benchmarks/serve_bench.py --parts 1,2 --requests 50 --repeats 5
    python benchmarks/serve_bench.py --sizes-mb 1,4,16 --stage-ms 20,30,20 --concurrency 1,4,8
    python benchmarks/serve_bench.py --parts 3 --model M.onnx --cluster C.yaml --build-dir build/

Everything runs in this process, without Ray: the gRPC servers (stage workers from
runtime.worker.serve_stage, the endpoint from runtime.endpoint.start_endpoint) live on one asyncio event
loop in a background thread, the clients drive them from the main thread, all on 127.0.0.1. Each part
alternates the two things it compares, --repeats rounds of --requests requests each (part 2: of
--pipeline-requests), and prints medians over all rounds and their ratio. Nothing is asserted.

1. Per-hop overhead: one StageWorker with an identity stage (outputs = its input), driven directly over
   its Process stream (reply_to empty: the reply comes back on the same stream), one float32 tensor of
   each --sizes-mb MiB, against a raw loopback TCP echo (a tiny echo-server thread: send N bytes, receive
   the N bytes back) of the same bytes. A round trip is two hops; per hop = round trip / 2 for both.
2. Pipelining: a chain of len(--stage-ms) workers whose stages sleep that many ms (time.sleep in the
   worker's executor thread) + the endpoint serving x float32 [1, 256], driven by runtime.client.run_bench
   at each --concurrency. Each stage is also timed alone; the bound is 1 / the slowest stage.
   Prints throughput, measured / bound (goal >= 0.8) and the speed-up over concurrency 1.
3. End-to-end overhead: --model planned on --cluster (restrict_to_compiler, plan), cut
   (write_stage_models) and compiled with TVM (compile_plan; content-cached, so a second run does no
   build work) into a temporary folder (or --build-dir); then (a) the stage artifacts run one after the
   other in this process (run_artifact) against (b) the same artifacts behind the chain of workers +
   endpoint (stage_specs, model_spec, artifact_executor), concurrency 1. Both (a) and (b) check the
   artifact's sha256 on every run (run_artifact does), so the difference is serving alone.

Caveats: client, servers and TVM share this machine's cores and one Python interpreter (the GIL), so the
figures are an upper bound on the overhead of a deployment with one stage per machine. TVM reads its
thread count once (TVM_NUM_THREADS; --threads sets it before TVM is imported).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from nndeploy.proto import stage_pb2
from nndeploy.runtime.chain import free_ports
from nndeploy.runtime.client import Client, Metadata, random_tensor, run_bench
from nndeploy.runtime.served import ModelSpec
from nndeploy.runtime.wire import frame
from nndeploy.runtime.worker import Execute, StageSpec
from nndeploy.types import TensorSpec

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


# --- the servers ------------------------------------------------------------------------------------------


from bench_support import (  # noqa: E402  (the script folder is on sys.path)
    IO_TIMEOUT_S,
    WARMUP,
    EchoServer,
    ServerLoop,
    float_list,
    grpc_round_trips,
    int_list,
    median,
    raw_round_trips,
    table,
    timed_ms,
)


def identity(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The stage that returns its inputs."""
    return dict(inputs)


def part_hops(args: argparse.Namespace) -> None:
    print(
        f"1. Per-hop overhead: identity StageWorker over its Process stream (plain TCP, mutual TLS, shared "
        f"memory) vs raw loopback TCP echo ({args.requests} round trips x {args.repeats} rounds per size, "
        "median; per hop = round trip / 2)"
    )
    from nndeploy.runtime.certs import make_certificates
    from nndeploy.runtime.tls import load_tls

    rng = np.random.default_rng(0)
    kinds = ("tcp", "grpc", "tls", "shm", "shm-stream", "raw")
    measured: dict[tuple[str, int], list[float]] = {(k, mb): [] for k in kinds for mb in args.sizes_mb}
    spec = StageSpec(index=0, device="local", inputs=("x",), outputs=("x",), downstream=None)
    with tempfile.TemporaryDirectory(prefix="serve-bench-certs-") as certs:
        make_certificates(Path(certs), stages=1)
        stage_tls, client_tls = load_tls(Path(certs) / "stage-0"), load_tls(Path(certs) / "endpoint")
        with ServerLoop() as servers, EchoServer() as echo:
            plain = f"127.0.0.1:{servers.start_worker(spec, identity)}"
            secure = f"localhost:{servers.start_worker(spec, identity, tls=stage_tls)}"
            messages = {}
            for mb in args.sizes_mb:
                x = rng.standard_normal(mb * MIB // 4).astype(np.float32)
                messages[mb] = (frame(stage_pb2.StageRequest(request_id=f"hop-{mb}"), {"x": x}), x.tobytes())
            trips = {
                "tcp": (plain, None, False, True),
                "grpc": (plain, None, False, False),
                "tls": (secure, client_tls, False, False),
                "shm": (plain, None, True, True),
                "shm-stream": (plain, None, True, False),
            }

            async def rounds() -> None:  # one client loop for all (grpc.aio dislikes a loop per call)
                for _ in range(args.repeats):
                    for mb, (request, payload) in messages.items():
                        for kind, (address, tls, shared, side) in trips.items():
                            measured[kind, mb] += await grpc_round_trips(
                                address, request, len(payload), args.requests, tls, shared, side
                            )
                        measured["raw", mb] += raw_round_trips(echo.port, payload, args.requests)

            asyncio.run(rounds())
    rows = []
    for mb in args.sizes_mb:
        hop = {kind: median(measured[kind, mb]) / 2 for kind in kinds}
        raw = hop["raw"]
        rows.append(
            [
                f"{mb} MiB",
                *(f"{hop[k]:.3f}" for k in kinds),
                *(f"{hop[k] / raw:.2f}" for k in ("tcp", "grpc", "tls", "shm")),
                f"{hop['shm'] / mb:.3f}",
                f"{mb * MIB / (hop['tcp'] / 1e3) / 1e9:.2f}",
                f"{mb * MIB / (raw / 1e3) / 1e9:.2f}",
            ]
        )
    header = ["tensor", "TCP ms/hop", "gRPC-only ms/hop", "TLS ms/hop", "shm ms/hop"]
    header += ["shm-on-stream ms/hop", "raw TCP ms/hop"]
    header += ["TCP/raw", "gRPC-only/raw", "TLS/raw", "shm/raw", "shm ms/MiB", "TCP GB/s", "raw GB/s"]
    print(table(header, rows))
    print(
        "    TCP: the message whole on the stream's side connection (runtime.bulk: what plain-TCP stages "
        "use for\n    messages of 64 KiB and more); gRPC-only and TLS: the tensor spliced into the stream's "
        "messages\n    (runtime.wire; TLS between stages keeps every message on the authenticated stream); "
        "shm: the tensor in\n    shared memory (runtime.shm: one copy into a reused segment, read in "
        "place), where it is going on\n    the side connection (what stages on one host do); shm-on-stream: "
        "the same with the stream carrying where it is.\n    Goals: TCP <= 2x raw, shm <= 0.3 ms/MiB."
    )


# --- 2. pipelining ----------------------------------------------------------------------------------------


def sleeper(ms: float) -> Execute:
    """A stage that sleeps `ms` milliseconds and passes its inputs on."""

    def execute(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(ms / 1e3)
        return dict(inputs)

    return execute


def start_chain(
    servers: ServerLoop, specs: list[StageSpec], executes: list[Execute], ports: list[int]
) -> None:
    """Start the workers, last stage first."""
    for spec, execute, port in reversed(list(zip(specs, executes, ports, strict=True))):
        servers.start_worker(spec, execute, port)


def part_pipeline(args: argparse.Namespace) -> None:
    stage_ms = args.stage_ms
    count = len(stage_ms)
    concurrency = sorted({1, *args.concurrency})
    executes = [sleeper(ms) for ms in stage_ms]
    x = np.zeros((1, 256), np.float32)
    alone = [median(timed_ms(lambda e=e: e({"x": x}), args.requests)) for e in executes]
    bound = 1e3 / max(alone)
    print(
        f"2. Pipelining: {count} stages sleeping {'/'.join(f'{ms:g}' for ms in stage_ms)} ms "
        f"(alone, median of {args.requests}: {'/'.join(f'{ms:.1f}' for ms in alone)} ms) + endpoint, "
        f"x float32 [1, 256]; {args.pipeline_requests} requests x {args.repeats} rounds per concurrency"
    )
    ports = free_ports(count)
    addresses = [f"127.0.0.1:{p}" for p in ports]
    specs = [
        StageSpec(
            index=i,
            device=f"stage-{i}",
            inputs=("x",),
            outputs=("x",),
            downstream=addresses[i + 1] if i + 1 < count else None,
        )
        for i in range(count)
    ]
    spec_x = TensorSpec("x", (1, 256), "float32")
    model = ModelSpec(
        name="pipeline",
        version="1",
        inputs=(spec_x,),
        outputs=(spec_x,),
        stages=tuple((s.device, a) for s, a in zip(specs, addresses, strict=True)),
        timeout_s=IO_TIMEOUT_S,
    )
    meta = Metadata(model.name, {"x": (np.dtype(np.float32), (1, 256))})
    throughput: dict[int, list[float]] = {c: [] for c in concurrency}
    latency: dict[int, list[float]] = {c: [] for c in concurrency}
    errors = dict.fromkeys(concurrency, 0)
    with ServerLoop() as servers:
        start_chain(servers, specs, executes, ports)
        target = f"127.0.0.1:{servers.start_endpoint(model)}"
        run_bench(target, meta, 1, WARMUP, timeout_s=IO_TIMEOUT_S)
        for _ in range(args.repeats):
            for c in concurrency:
                report = run_bench(target, meta, c, args.pipeline_requests, timeout_s=IO_TIMEOUT_S)
                throughput[c].append(report.throughput)
                latency[c] += report.latencies_ms
                errors[c] += report.errors
    sequential = median(throughput[1])
    rows = [
        [
            str(c),
            f"{median(throughput[c]):.1f}",
            f"{median(latency[c]):.1f}",
            f"{bound:.1f}",
            f"{median(throughput[c]) / bound:.2f}",
            f"{median(throughput[c]) / sequential:.2f}",
            str(errors[c]),
        ]
        for c in concurrency
    ]
    print(
        table(
            ["concurrency", "req/s", "p50 ms", "bound req/s", "measured/bound", "speed-up vs 1", "errors"],
            rows,
        )
    )
    print(
        f"    bound = 1 / slowest stage alone ({max(alone):.1f} ms); sequential ideal = 1 / sum of stages "
        f"= {1e3 / sum(alone):.1f} req/s"
    )


# --- 3. end-to-end overhead -------------------------------------------------------------------------------


def build(args: argparse.Namespace, folder: Path) -> tuple[Any, Any]:
    """Plan, cut and compile --model on --cluster into `folder`; returns (plan, manifest)."""
    from nndeploy.cli.common import write_stage_models
    from nndeploy.graph import load_graph
    from nndeploy.partitioner.planner import plan as make_plan
    from nndeploy.planfile import write_plan
    from nndeploy.targets.compile import compile_plan
    from nndeploy.targets.devices.cluster import load_cluster
    from nndeploy.targets.frontend.ops import restrict_to_compiler

    graph = load_graph(args.model)
    cluster = restrict_to_compiler(load_cluster(args.cluster))
    plan = make_plan(graph, cluster, args.objective)
    plan_file = write_plan(plan, folder / "plan.json")
    model_path, stage_models = write_stage_models(plan, plan_file, folder / "stages", args.model)
    manifest = compile_plan(
        plan, "plan.json", stage_models, folder, args.jobs, None, None, model_path=str(model_path.resolve())
    )
    return plan, manifest


def part_end_to_end(args: argparse.Namespace) -> None:
    from nndeploy.runtime.chain import model_spec, stage_specs
    from nndeploy.targets.artifacts.loader import emulated_library, run_artifact, why_not_runnable

    folder = args.build_dir or Path(tempfile.mkdtemp(prefix="nndeploy-serve-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        plan, manifest = build(args, folder)
        build_s = time.perf_counter() - started
        cached = sum(e.cached for e in manifest.stages)
        model_name = args.model.name
        print(
            f"3. End-to-end overhead: {model_name} planned on {args.cluster.name} ({args.objective}), "
            f"{len(plan.stages)} stage(s) on {', '.join(s.device for s in plan.stages)}; plan + compile "
            f"{build_s:.1f} s ({cached} stage(s) from the build cache); concurrency 1, "
            f"{args.requests} requests x {args.repeats} rounds"
        )
        problems = [f"stage {e.stage}: {r}" for e in manifest.stages if (r := why_not_runnable(e))]
        if problems:
            print("    not run: " + "; ".join(problems))
            return
        inputs = {t.name: random_tensor(np.dtype(t.dtype), t.shape) for t in plan.inputs}
        # A stage under the aarch64 emulator: run_artifact starts qemu for each call, so its own compute
        # is timed inside one emulated process (run_artifact's repeats), and (a) is the sum of the
        # stages' compute instead of a run in this process.
        emulated = [e.stage for e in manifest.stages if emulated_library(folder, e) is not None]

        def in_process() -> dict[str, np.ndarray]:
            tensors = dict(inputs)
            for entry in manifest.stages:
                outputs, _ = run_artifact(folder, entry, tensors)
                tensors.update(outputs)
            return {t.name: tensors[t.name] for t in plan.outputs}

        def stage_inputs(entry: Any) -> dict[str, np.ndarray]:
            tensors = dict(inputs)
            for earlier in manifest.stages[: entry.stage]:
                tensors.update(run_artifact(folder, earlier, tensors)[0])
            return tensors

        expected = in_process()
        stage_runs = [partial(run_artifact, folder, e, stage_inputs(e)) for e in manifest.stages]
        emulated_ms = {
            i: run_artifact(folder, manifest.stages[i], stage_inputs(manifest.stages[i]), args.requests)[1]
            for i in emulated
        }
        for i, run in enumerate(stage_runs):
            if i not in emulated:
                run()
        ports = free_ports(len(plan.stages))
        addresses = [f"127.0.0.1:{p}" for p in ports]
        specs = stage_specs(plan, addresses)
        model = model_spec(plan, addresses, timeout_s=IO_TIMEOUT_S)
        meta = Metadata(model.name, {t.name: (np.dtype(t.dtype), t.shape) for t in model.inputs})
        local_ms: list[float] = []
        served_ms: list[float] = []
        stage_ms: list[list[float]] = [[] for _ in manifest.stages]
        errors = 0
        with ServerLoop() as servers:
            for spec, entry, port in reversed(list(zip(specs, manifest.stages, ports, strict=True))):
                servers.start_built(folder, entry, spec, port)
            target = f"127.0.0.1:{servers.start_endpoint(model)}"
            with Client(target, timeout_s=IO_TIMEOUT_S) as client:
                served = client.infer(model.name, inputs)
            diff = max(float(np.max(np.abs(served[k] - expected[k]))) for k in expected)
            run_bench(target, meta, 1, WARMUP, timeout_s=IO_TIMEOUT_S)
            for _ in range(args.repeats):
                if not emulated:
                    local_ms += timed_ms(in_process, args.requests)
                report = run_bench(target, meta, 1, args.requests, timeout_s=IO_TIMEOUT_S)
                served_ms += report.latencies_ms
                errors += report.errors
                for i, (runs, run) in enumerate(zip(stage_ms, stage_runs, strict=True)):
                    runs += emulated_ms[i] if i in emulated else timed_ms(run, max(1, args.requests // 3))
        if emulated:
            local_ms = [sum(median(runs) for runs in stage_ms)]
        a, b = median(local_ms), median(served_ms)
        sizes = [
            sum(t.numel * np.dtype(t.dtype).itemsize for t in ts) / 1e3
            for ts in (plan.inputs, *(s.outputs for s in plan.stages))
        ]
        hops = len(plan.stages) + 1
        stage_text = ", ".join(f"{i}: {median(runs):.2f} ms" for i, runs in enumerate(stage_ms))
        print(f"    each stage alone (run_artifact, median): {stage_text}")
        print(
            table(
                ["path", "median ms", "p90 ms", "requests", "errors"],
                [
                    [
                        "(a) the stages' own compute, summed" if emulated else "(a) artifacts in one process",
                        f"{a:.2f}",
                        f"{np.percentile(local_ms, 90):.2f}",
                        str(len(local_ms)),
                        "0",
                    ],
                    [
                        "(b) workers + endpoint (KServe v2 client)",
                        f"{b:.2f}",
                        f"{np.percentile(served_ms, 90):.2f}" if served_ms else "nan",
                        str(len(served_ms)),
                        str(errors),
                    ],
                ],
            )
        )
        print(
            f"    overhead (b) - (a) = {b - a:.2f} ms over {hops} hops "
            f"({(b - a) / hops:.2f} ms/hop; tensors sent: {' -> '.join(f'{s:.0f} kB' for s in sizes)}); "
            f"ratio (b)/(a) = {b / a:.2f}; served output vs in-process: max abs diff {diff:.3g}"
        )
    finally:
        if args.build_dir is None and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"    build kept in {folder}")


# --- main -------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--parts", type=int_list, default=[1, 2, 3], help="Which parts to run (default 1,2,3)."
    )
    parser.add_argument(
        "--requests", type=int, default=30, help="Timed requests per series (parts 1 and 3; default 30)."
    )
    parser.add_argument("--repeats", type=int, default=3, help="Rounds of each series (default 3).")
    parser.add_argument(
        "--sizes-mb", type=int_list, default=[1, 4, 16], help="Part 1 tensor sizes in MiB (default 1,4,16)."
    )
    parser.add_argument(
        "--stage-ms",
        type=float_list,
        default=[20.0, 30.0, 20.0],
        help="Part 2 stage times (default 20,30,20).",
    )
    parser.add_argument(
        "--concurrency", type=int_list, default=[4, 8], help="Part 2 concurrencies besides 1 (default 4,8)."
    )
    parser.add_argument(
        "--pipeline-requests", type=int, default=60, help="Part 2 requests per series (default 60)."
    )
    parser.add_argument(
        "--model", type=Path, default=ROOT / "examples" / "models" / "camera_cnn.onnx", help="Part 3 model."
    )
    parser.add_argument(
        "--cluster",
        type=Path,
        default=ROOT / "examples" / "clusters" / "two-servers.yaml",
        help="Part 3 cluster.",
    )
    parser.add_argument("--objective", choices=("throughput", "latency"), default="throughput")
    parser.add_argument("--jobs", type=int, default=2, help="Parallel stage builds (default 2).")
    parser.add_argument("--build-dir", type=Path, default=None, help="Part 3 build folder (kept).")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary build folder.")
    parser.add_argument(
        "--threads", type=int, default=None, help="TVM_NUM_THREADS for part 3 (default: TVM's own choice)."
    )
    args = parser.parse_args(argv)
    for name in ("requests", "repeats", "pipeline_requests", "jobs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        if "tvm" in sys.modules:  # pragma: no cover - nothing above imports TVM
            raise SystemExit("internal error: TVM was imported before TVM_NUM_THREADS could be set")
        os.environ["TVM_NUM_THREADS"] = str(args.threads)
    started = time.perf_counter()
    print(
        f"serve_bench: {os.cpu_count()} CPU(s), Python {sys.version.split()[0]}, grpcio {grpc.__version__}, "
        f"numpy {np.__version__}; everything on 127.0.0.1 in one process"
    )
    parts = {1: part_hops, 2: part_pipeline, 3: part_end_to_end}
    failed = []
    for number in args.parts:
        if number not in parts:
            print(f"no part {number} (parts are 1, 2, 3)")
            failed.append(number)
            continue
        part_started = time.perf_counter()
        print()
        try:
            parts[number](args)
        except Exception as exc:
            print(f"part {number} failed: {type(exc).__name__}: {exc}")
            traceback.print_exc()
            failed.append(number)
        print(f"    ({time.perf_counter() - part_started:.1f} s)")
    print(f"\ntotal wall time: {time.perf_counter() - started:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
