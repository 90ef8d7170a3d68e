"""The planner's links against a real one: a camera pipeline served over three hosts (network namespaces
on this machine, benchmarks/hosts.py: Ray's head, an edge box, a server) whose edge link is shaped with
`tc tbf` to Wi-Fi speed, measured side by side with what plan.json predicted.

    sudo python benchmarks/multi_host.py                     # 100mbit, 40 requests, 15 s of load
    sudo python benchmarks/multi_host.py --rate 50mbit --requests 100 --load-s 30

Steps, all real: plan + compile the model below on edge + server (the cluster says the link is --rate);
start the hosts and a Ray cluster on them (token auth on); `nndeploy profile --links` measures the link
between the two devices' nodes; `nndeploy serve --address` on the edge; then
1. per hop, concurrency 1: the measured time from a sender to its stage (the endpoint's histogram
   nndeploy_stage_transfer_duration_seconds; one machine's clock, so exact) against plan.json's
   prediction for that cut tensor (its bytes over the link, the link's latency, the planner's hop cost);
2. throughput at --concurrency against the bound of the slowest stage or link, both as the plan predicts
   it and as measured (the measured stage compute and hop times).
Medians and means over --requests requests; nothing is asserted. Needs root and iproute2.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from hosts import Hosts, RayNodes, unavailable
from onnx import TensorProto, helper, numpy_helper

EDGE_PROFILE = {
    "name": "x86-edge-box",
    "description": "A small x86 box at the camera (slow on purpose: the heavy part belongs on the server)",
    "kind": "edge",
    "arch": "x86_64",
    "tvm_target": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"},
    "peak_gflops": {"float32": 20.0},
    "mem_bw_gbytes_s": 10.0,
    "mem_gib": 8,
    "launch_overhead_us": 5.0,
}
DEVICES = {"edge": {"nndeploy-device-edge": 1.0}, "server": {"nndeploy-device-server": 1.0}}


def camera_model() -> onnx.ModelProto:
    """x[1,3,128,128] pooled to [1,3,32,32] (cheap: the edge's), then three 64-channel 3x3 convs and a
    global average pool to y[1,64] (heavy: the server's)."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)
        for name, shape in (("w0", (64, 3, 3, 3)), ("w1", (64, 64, 3, 3)), ("w2", (64, 64, 3, 3)))
    ]
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[4, 4], strides=[4, 4], name="pool"),
        helper.make_node("Conv", ["p", "w0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["y"], name="flatten"),
    ]
    graph = helper.make_graph(
        nodes,
        "camera",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 128, 128])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def cluster(gbps: float) -> dict[str, Any]:
    """edge (the slow box where requests arrive and results go) and server, on a `gbps` link."""
    return {
        "name": "camera-and-server",
        "profiles": ["profiles"],
        "devices": [
            {"name": "edge", "profile": "x86-edge-box"},
            {"name": "server", "profile": "x86-avx2-server"},
        ],
        "links": [{"between": ["edge", "server"], "gbps": gbps, "latency_ms": 0.5}],
        "input_at": "edge",
        "output_to": "edge",
    }


def build(folder: Path, gbps: float = 0.1) -> tuple[Path, Path, dict[str, Any]]:
    """The camera model planned on edge + server and compiled in `folder`: (model, build, plan)."""
    (folder / "profiles").mkdir(parents=True, exist_ok=True)
    (folder / "profiles" / "x86-edge-box.yaml").write_text(yaml.safe_dump(EDGE_PROFILE))
    (folder / "cluster.yaml").write_text(yaml.safe_dump(cluster(gbps)))
    model = folder / "camera.onnx"
    onnx.save(camera_model(), model)
    for args in (
        ["plan", str(model), "--cluster", str(folder / "cluster.yaml"), "-o", str(folder / "plan.json")],
        ["compile", str(folder / "plan.json"), "-o", str(folder / "build")],
    ):
        done = subprocess.run([sys.executable, "-m", "nndeploy", *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"nndeploy {args[0]} failed: {done.stdout}{done.stderr}")
    return model, folder / "build", json.loads((folder / "plan.json").read_text())


class Serving:
    """`nndeploy serve --address` on `host` (and `extra` options), with what it printed (the stage table's
    pids)."""

    def __init__(
        self,
        net: Hosts,
        ray: RayNodes,
        build_dir: Path,
        host: str = "edge",
        port: int = 8001,
        extra: tuple[str, ...] = (),
    ) -> None:
        address = net.hosts[host].address
        args = [sys.executable, "-m", "nndeploy", "serve", str(build_dir), "--address", ray.address]
        args += ["--host", address, "--port", str(port), "--no-http", "--metrics-port", "9001", *extra]
        self.process = subprocess.Popen(
            net.command(host, args), env=ray.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.address = f"{address}:{port}"
        self.metrics = f"http://{address}:9001/metrics"
        self.output: list[str] = []
        self.pids: list[int] = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            self.output.append(line)
            match = re.match(r"\s*│\s*(\d+)\s*│\s*\S+\s*│\s*\S+\s*│\s*(\d+)\s*│", line)
            if match:
                self.pids.append(int(match.group(2)))
            if "press Ctrl-C" in line:
                return
        self.stop()
        raise RuntimeError("serve did not start:\n" + "".join(self.output))

    def stop(self) -> str:
        """SIGTERM, wait, and everything it printed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        rest = self.process.stdout.read() if self.process.stdout else ""  # type: ignore[union-attr]
        return "".join(self.output) + (rest or "")


def scrape(net: Hosts, host: str, url: str) -> dict[tuple[str, str], float]:
    """Prometheus samples at `url`, fetched from inside `host`: {(name, stage label): value}."""
    fetch = [
        sys.executable,
        "-c",
        f"import urllib.request; print(urllib.request.urlopen({url!r}).read().decode())",
    ]
    text = subprocess.run(net.command(host, fetch), capture_output=True, text=True, check=True).stdout
    samples = {}
    for line in text.splitlines():
        match = re.match(r"^(\w+)\{([^}]*)\} (\S+)$", line)
        if match:
            stage = re.search(r'stage="(\d+)"', match.group(2))
            samples[match.group(1), stage.group(1) if stage else ""] = float(match.group(3))
    return samples


def bench(net: Hosts, ray: RayNodes, host: str, target: str, *args: str) -> dict[str, Any]:
    """`nndeploy bench --json` run on `host`."""
    command = [sys.executable, "-m", "nndeploy", "bench", target, "--json", *args]
    done = subprocess.run(net.command(host, command), env=ray.env, capture_output=True, text=True)
    return json.loads(done.stdout)


def per_stage_ms(before: dict, after: dict, metric: str, stages: int) -> list[float]:
    """Mean ms per request of histogram `metric` per stage between two scrapes."""
    means = []
    for stage in range(stages):
        key = str(stage)
        total = after.get((f"{metric}_sum", key), 0.0) - before.get((f"{metric}_sum", key), 0.0)
        count = after.get((f"{metric}_count", key), 0.0) - before.get((f"{metric}_count", key), 0.0)
        means.append(total / count * 1e3 if count else float("nan"))
    return means


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", default="100mbit", help="the edge link's rate for tc tbf (and the plan)")
    parser.add_argument("--requests", type=int, default=40, help="requests at concurrency 1")
    parser.add_argument("--concurrency", type=int, default=4, help="for the throughput part")
    parser.add_argument("--load-s", type=float, default=15.0, help="seconds of the throughput part")
    args = parser.parse_args(argv)
    why = unavailable()
    if why:
        print(f"multi_host: cannot make hosts here: {why}", file=sys.stderr)
        return 2
    gbps = float(re.match(r"([\d.]+)mbit$", args.rate).group(1)) / 1000  # type: ignore[union-attr]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="multi-host-") as tmp:
        folder = Path(tmp)
        _, build_dir, plan = build(folder, gbps)
        stages = plan["stages"]
        print(
            f"plan: {' -> '.join(s['device'] for s in stages)} on a {args.rate} edge link "
            f"({time.monotonic() - started:.0f} s to plan and compile)"
        )
        with (
            Hosts(["head", "edge", "server"], shaped={"edge": args.rate}) as net,
            RayNodes(net, "head", {"head": {}, **DEVICES}) as ray,
        ):
            probe = [sys.executable, "-m", "nndeploy", "profile", "--links", "--address", ray.address]
            probe += ["--cluster", str(folder / "cluster.yaml"), "-o", str(folder / "measured")]
            subprocess.run(
                net.command("edge", probe), env=ray.env, capture_output=True, text=True, check=True
            )
            measured_link = yaml.safe_load((folder / "measured" / "cluster.yaml").read_text())["links"][0]
            print(
                f"link edge <-> server: declared {gbps:g} Gb/s, 0.5 ms; nndeploy profile --links measured "
                f"{measured_link['gbps']:.4f} Gb/s, {measured_link['latency_ms']:.3f} ms"
            )
            serving = Serving(net, ray, build_dir)
            try:
                bench(net, ray, "edge", serving.address, "--requests", "5")  # warm up
                before = scrape(net, "edge", serving.metrics)
                one = bench(net, ray, "edge", serving.address, "--requests", str(args.requests))
                after = scrape(net, "edge", serving.metrics)
                hops = per_stage_ms(before, after, "nndeploy_stage_transfer_duration_seconds", len(stages))
                compute = per_stage_ms(before, after, "nndeploy_stage_compute_duration_seconds", len(stages))
                queue = per_stage_ms(before, after, "nndeploy_stage_queue_duration_seconds", len(stages))
                predicted = [plan["input_transfer_ms"]] + [s["transfer_ms"] for s in stages[:-1]]
                print(f"\n1. hops, concurrency 1, {args.requests} requests (mean ms)")
                print(f"   {'hop into':<18}{'predicted':>10}{'measured':>10}{'measured/predicted':>20}")
                for index, stage in enumerate(stages):
                    came = "endpoint" if index == 0 else stages[index - 1]["device"]
                    name = f"{came} -> {stage['device']}"
                    ratio = hops[index] / predicted[index] if predicted[index] else float("nan")
                    print(f"   {name:<18}{predicted[index]:>10.3f}{hops[index]:>10.3f}{ratio:>20.2f}")
                print(
                    "   stage compute ms, predicted / measured: "
                    + ", ".join(
                        f"{s['device']} {s['compute_ms']:.3f} / {c:.3f}"
                        for s, c in zip(stages, compute, strict=True)
                    )
                )
                print(
                    "   queue ms before each stage's compute (the hosts share this machine's cores): "
                    + ", ".join(f"{s['device']} {q:.2f}" for s, q in zip(stages, queue, strict=True))
                )
                print(
                    f"   latency p50 {one['latency_ms']['p50']:.2f} ms "
                    f"(plan predicts {plan['latency_ms']:.2f})"
                )
                load = bench(
                    net,
                    ray,
                    "edge",
                    serving.address,
                    "--concurrency",
                    str(args.concurrency),
                    "--duration",
                    f"{args.load_s:g}s",
                )
                slowest = max([*compute, *hops[1:]])
                print(
                    f"\n2. throughput at concurrency {args.concurrency} for {args.load_s:g} s: "
                    f"{load['throughput_per_s']:.1f} req/s ({load['failed']} failed)"
                )
                print(
                    "   bound of the slowest stage or link, as planned: "
                    f"{plan['throughput_per_s']:.1f} req/s "
                    f"({plan['bottleneck']}); as measured: {1e3 / slowest:.1f} req/s; "
                    f"achieved / measured bound = {load['throughput_per_s'] * slowest / 1e3:.2f}"
                )
            finally:
                serving.stop()
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
