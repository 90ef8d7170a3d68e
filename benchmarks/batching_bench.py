"""What dynamic batching buys: throughput and p50/p99 latency of `nndeploy serve` with and without
`--max-batch`, at several client concurrencies, on the example models, in one run.

    python benchmarks/batching_bench.py                                  # camera_cnn and tiny_bert
    python benchmarks/batching_bench.py --models camera_cnn --concurrency 1,8,32 --duration 10
    python benchmarks/batching_bench.py --batch-sizes 1,4,8 --max-batch 8 --delay-ms 5 --work-dir /tmp/bb

For each model (examples/models/<name>.onnx, written by examples/build_models.py when missing): plan it on
a one-device cluster of this host's kind (--profile), compile it with `--batch-sizes`, then for each mode
(batching off, then on with --max-batch / --batch-delay-ms) start `nndeploy serve` (real Ray, real gRPC
worker and endpoint) and drive it with `nndeploy bench --duration --json` at each --concurrency (every
request one sample; batching joins concurrent requests). Each (mode, concurrency) is run --repeats times,
alternating the modes, and the medians are printed with the throughput ratio on/off. Nothing is asserted.

Caveats: the client, the endpoint and the stage worker share this machine's cores; TVM's thread count is
--threads for the worker. A machine with more cores than the stage uses shows less contention.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "examples" / "models"
# Input shapes (batch 1) of the example models whose inputs are dynamic.
SHAPES = {"tiny_bert": ["input_ids=1x128", "attention_mask=1x128"]}


def nndeploy(*args: object, timeout: float = 1800, env: dict[str, str] | None = None) -> str:
    """Run the CLI; its stdout, or exit with its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "nndeploy", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if done.returncode != 0:
        sys.exit(f"nndeploy {' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def build(model: str, work: Path, profile: str, sizes: str) -> Path:
    """Plan `model` on one device and compile it at `sizes`; returns the build folder."""
    path = MODELS / f"{model}.onnx"
    if not path.is_file():
        subprocess.run([sys.executable, str(ROOT / "examples" / "build_models.py")], check=True)
    folder = work / model
    folder.mkdir(parents=True, exist_ok=True)
    cluster = {"name": "one-host", "devices": [{"name": "host", "profile": profile}]}
    (folder / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    shapes = [arg for shape in SHAPES.get(model, []) for arg in ("--input-shape", shape)]
    nndeploy("plan", path, "--cluster", folder / "cluster.yaml", "-o", folder / "plan.json", *shapes)
    manifest = folder / "build" / "manifest.json"
    if manifest.is_file():  # a build of this plan at these sizes from an earlier run (--work-dir): reuse it
        built = {1, *map(int, json.loads(manifest.read_text()).get("batch_builds", {}))}
        if built == {int(b) for b in sizes.split(",")} | {1}:
            print(f"[{model}] reusing {folder / 'build'}", file=sys.stderr, flush=True)
            return folder / "build"
    print(f"[{model}] compiling at batch sizes {sizes} ...", file=sys.stderr, flush=True)
    nndeploy("compile", folder / "plan.json", "-o", folder / "build", "--batch-sizes", sizes)
    return folder / "build"


class Serve:
    """`nndeploy serve` in a subprocess, until stopped."""

    def __init__(self, build_dir: Path, port: int, extra: list[str], env: dict[str, str]) -> None:
        args = ["serve", build_dir, "--port", port, "--no-http", "--metrics-port", port + 1, *extra]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nndeploy", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        seen = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            seen.append(line)
            if "press Ctrl-C" in line:
                return
        self.stop()
        sys.exit("serve did not start:\n" + "".join(seen[-20:]))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def drive(target: str, concurrency: int, duration_s: float) -> dict[str, Any]:
    """`nndeploy bench --json` for `duration_s` at `concurrency`."""
    text = nndeploy(
        "bench",
        target,
        "--concurrency",
        concurrency,
        "--duration",
        f"{duration_s:g}s",
        "--json",
    )
    return json.loads(text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="camera_cnn,tiny_bert")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=20.0,
        help="serve's --batch-delay-ms: long enough for the clients' requests to arrive together here",
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of load per measurement")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--profile", default="x86-avx2-server")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--port", type=int, default=18401)
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="keep the builds here (default: a temp dir)"
    )
    args = parser.parse_args()
    env = {**os.environ, "TVM_NUM_THREADS": str(args.threads)}
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="nndeploy-batching-"))
    modes = {"off": [], "on": ["--max-batch", str(args.max_batch), "--batch-delay-ms", f"{args.delay_ms:g}"]}
    rows = []
    for model in args.models.split(","):
        build_dir = build(model, work, args.profile, args.batch_sizes)
        found: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for _ in range(args.repeats):
            for mode, extra in modes.items():
                server = Serve(build_dir, args.port, extra, env)
                try:
                    for concurrency in concurrencies:
                        report = drive(f"127.0.0.1:{args.port}", concurrency, args.duration)
                        found.setdefault((mode, concurrency), []).append(report)
                        print(
                            f"[{model}] batching {mode}, concurrency {concurrency}: "
                            f"{report['throughput_per_s']:.1f} req/s, p50 {report['latency_ms']['p50']} ms, "
                            f"{report['failed']} failed",
                            file=sys.stderr,
                            flush=True,
                        )
                finally:
                    server.stop()
        for concurrency in concurrencies:
            figures = {}
            for mode in modes:
                reports = found[(mode, concurrency)]
                figures[mode] = (
                    statistics.median(r["throughput_per_s"] for r in reports),
                    statistics.median(r["latency_ms"]["p50"] or 0.0 for r in reports),
                    statistics.median(r["latency_ms"]["p99"] or 0.0 for r in reports),
                    sum(r["failed"] for r in reports),
                )
            rows.append((model, concurrency, figures))
    print(
        f"\nbatching on = --max-batch {args.max_batch} --batch-delay-ms {args.delay_ms:g}, built at "
        f"{args.batch_sizes}; {args.duration:g} s per point, medians of {args.repeats}, "
        f"TVM threads {args.threads}"
    )
    header = "model        conc | off: req/s   p50 ms   p99 ms | on: req/s   p50 ms   p99 ms | on/off  failed"
    print(header)
    print("-" * len(header))
    for model, concurrency, figures in rows:
        off, on = figures["off"], figures["on"]
        ratio = on[0] / off[0] if off[0] else float("nan")
        print(
            f"{model:<12} {concurrency:>4} | {off[0]:>9.1f} {off[1]:>8.2f} {off[2]:>8.2f} | {on[0]:>8.1f} "
            f"{on[1]:>8.2f} {on[2]:>8.2f} | {ratio:>5.2f}x  {off[3] + on[3]}"
        )
    print(f"(builds in {work})", file=sys.stderr)


if __name__ == "__main__":
    main()
