"""Soak: `nndeploy serve` (real Ray, real gRPC workers) under steady load for a long run, on loopback.

    python benchmarks/soak.py                          # 10 minutes at concurrency 16, TLS + token
    python benchmarks/soak.py --minutes 1 --concurrency 8 --plaintext

It builds a small CNN over three x86 servers (planned and compiled by nndeploy itself), makes
certificates and a token (`nndeploy certs make`), starts `nndeploy serve` with them, and drives it with
nndeploy's client in windows of --window seconds. Each window prints requests sent / ok / failed by code,
requests/s, p50 and p99 latency, and the resident memory (RSS) of serve and of every stage worker. The
summary compares the first and last windows (RSS growth, p99 change) and totals the requests sent, ok and
failed (every request has a 30 s deadline, so each ends in one answer or one error).
The load is bounded in time and count and only ever targets 127.0.0.1.
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

ROOT = Path(__file__).resolve().parents[1]


def build(folder: Path) -> Path:
    """A small CNN (x[1,3,128,128]) planned over three fast-linked x86 servers and compiled."""
    import numpy as np
    import onnx
    import yaml
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights, previous = [], [], "x"
    for i in range(4):
        weights.append(
            numpy_helper.from_array(
                rng.standard_normal((8, 3 if i == 0 else 8, 3, 3)).astype(np.float32) * 0.2, f"w{i}"
            )
        )
        nodes += [
            helper.make_node("Conv", [previous, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
        previous = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "soak_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 128, 128])],
        [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [1, 8, 128, 128])],
        weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "soak_cnn.onnx")
    cluster = {
        "name": "soak",
        "devices": [{"name": f"server-{i}", "profile": "x86-avx2-server"} for i in range(3)],
        "default_link": {"gbps": 4000.0, "latency_ms": 1e-4},
        "input_at": "server-0",
        "output_to": "server-0",
    }
    (folder / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    for args in (
        [
            "plan",
            str(folder / "soak_cnn.onnx"),
            "--cluster",
            str(folder / "cluster.yaml"),
            "-o",
            str(folder / "plan.json"),
        ],
        ["compile", str(folder / "plan.json"), "-o", str(folder / "build")],
    ):
        subprocess.run(
            [sys.executable, "-m", "nndeploy", *args], check=True, capture_output=True, timeout=600
        )
    return folder / "build"


def rss_mib(pid: int) -> dict[str, float]:
    """RSS in MiB of `pid` (serve) and of each stage worker (a descendant whose command is Ray's actor
    for a stage), keyed 'serve' and 'stage-N'."""
    import psutil

    found: dict[str, float] = {}
    root = psutil.Process(pid)
    found["serve"] = root.memory_info().rss / 2**20
    for child in root.children(recursive=True):
        try:
            title = " ".join(child.cmdline())
            if "StageActorImpl" in title or "nndeploy-stage" in title:
                found[f"worker-{child.pid}"] = child.memory_info().rss / 2**20
        except psutil.Error:
            continue
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=60.0, help="seconds per measured window")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds of load before measuring")
    parser.add_argument("--plaintext", action="store_true", help="no TLS and no token")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from nndeploy.runtime.access import client_access
    from nndeploy.runtime.chain import free_ports
    from nndeploy.runtime.client import Client, run_bench

    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        folder = Path(scratch)
        build_dir = build(folder)
        port, metrics = free_ports(2)
        serve = [sys.executable, "-m", "nndeploy", "serve", str(build_dir), "--port", str(port)]
        serve += ["--metrics-port", str(metrics)]
        access = client_access(None, None, None, None)
        if not args.plaintext:
            certs = folder / "certs"
            subprocess.run(
                [sys.executable, "-m", "nndeploy", "certs", "make", "-o", str(certs)],
                check=True,
                capture_output=True,
            )
            serve += ["--tls-cert", str(certs / "server.crt"), "--tls-key", str(certs / "server.key")]
            serve += ["--auth-token-file", str(certs / "token")]
            access = client_access(certs / "ca.crt", None, None, certs / "token")
        process = subprocess.Popen(
            serve, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        target = f"localhost:{port}"
        try:
            deadline = time.monotonic() + 180
            for line in process.stdout:  # type: ignore[union-attr]
                if "press Ctrl-C" in line or time.monotonic() > deadline:
                    break
            with Client(target, timeout_s=30, access=access) as client:
                meta = client.metadata(None)
            run_bench(target, meta, args.concurrency, 1 << 62, 30.0, access, args.warmup)  # not measured
            windows = []
            started = time.monotonic()
            print(
                f"soak: {args.minutes:g} min at concurrency {args.concurrency}, "
                f"{'plaintext' if args.plaintext else 'TLS + bearer token'}, windows of {args.window:g} s",
                flush=True,
            )
            while time.monotonic() - started < args.minutes * 60:
                report = run_bench(target, meta, args.concurrency, 1 << 62, 30.0, access, args.window)
                memory = rss_mib(process.pid)
                window = {
                    "t_s": round(time.monotonic() - started, 1),
                    "sent": report.ok + report.errors,
                    "ok": report.ok,
                    "failed": report.errors,
                    "codes": report.error_codes,
                    "req_per_s": round(report.throughput, 1),
                    "p50_ms": round(statistics.median(report.latencies_ms), 2)
                    if report.latencies_ms
                    else None,
                    "p99_ms": round(report.p99_ms, 2),
                    "rss_mib": {k: round(v, 1) for k, v in memory.items()},
                }
                windows.append(window)
                print(json.dumps(window), flush=True)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
    first, last = windows[0], windows[-1]
    sent = sum(w["sent"] for w in windows)
    failed = sum(w["failed"] for w in windows)
    # Every request has a 30 s deadline, so each one ends in an answer or an error; one that never ended
    # would have stopped the run instead of letting it reach this line.
    print(f"\nsummary over {len(windows)} windows: {sent} requests sent, {sent - failed} ok, {failed} failed")
    print(
        f"  throughput first/last window: {first['req_per_s']} / {last['req_per_s']} req/s; "
        f"p50 {first['p50_ms']} / {last['p50_ms']} ms; p99 {first['p99_ms']} / {last['p99_ms']} ms"
    )
    serve_growth = last["rss_mib"]["serve"] - first["rss_mib"]["serve"]
    workers_first = sum(v for k, v in first["rss_mib"].items() if k != "serve")
    workers_last = sum(v for k, v in last["rss_mib"].items() if k != "serve")
    print(
        f"  RSS serve: {first['rss_mib']['serve']} -> {last['rss_mib']['serve']} MiB ({serve_growth:+.1f}); "
        f"stage workers total: {workers_first:.1f} -> {workers_last:.1f} MiB "
        f"({workers_last - workers_first:+.1f})"
    )
    if args.json:
        args.json.write_text(json.dumps(windows, indent=1))


if __name__ == "__main__":
    main()
