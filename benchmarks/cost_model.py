"""How well each cost model predicts measured stage times on this host, before and after calibration.

    python benchmarks/cost_model.py [--threads N] [--profile NAME] [--stages 2 3]

Training data: the op sweep plus every node of models that are NOT evaluated (the model zoo's
inception_v2, bvlc_alexnet, zfnet512 and vgg19). Evaluated (held out): the zoo's resnet50, squeezenet,
densenet121, inception_v1, shufflenet and the examples' camera_cnn and tiny_bert (1x128 tokens). Each is
planned over N identical servers of a profile this host can run (spec roofline, throughput objective), cut
into stage models, and every stage is timed with onnxruntime. Per stage it prints the measured ms and the
prediction of: the spec-sheet roofline ("spec"), the roofline with the measured peak and bandwidth
("peak"), the calibrated model fitted on the sweep alone ("sweep") and on the sweep plus the training
models ("cal"), then the median |pred - meas| / meas of each. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import onnx

from nndeploy.graph import load_graph, load_prepared_model
from nndeploy.partitioner.calibration import CalibratedCostModel, Calibration, fit_device, stage_ms
from nndeploy.partitioner.cost import CostModel, RooflineCostModel
from nndeploy.partitioner.planner import plan
from nndeploy.partitioner.split import split
from nndeploy.targets.devices.cluster import parse_cluster
from nndeploy.targets.devices.measured import measured_profile_data
from nndeploy.targets.devices.registry import device_from_profile, load_profiles, parse_profile
from nndeploy.targets.measure import profiling
from nndeploy.types import Cluster, Device

ROOT = Path(__file__).resolve().parents[1]
ZOO = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
TRAIN = ("inception_v2", "bvlc_alexnet", "zfnet512", "vgg19")
HELD_OUT = ("resnet50", "squeezenet", "densenet121", "inception_v1", "shufflenet")
EXAMPLES = ("camera_cnn", "tiny_bert")
SHAPES = {"input_ids": (1, 128), "attention_mask": (1, 128)}
CPU_PROFILES = ("x86-avx512-server", "x86-avx2-server", "raspberry-pi-5", "jetson-orin-nano-cpu")
COLUMNS = ("spec", "peak", "sweep", "cal")


def busy_cpu_seconds() -> tuple[float, float]:
    """(CPU-seconds all processes have been busy, CPU-seconds this process used) so far; the first from
    /proc/stat (nan where there is none). Their growth over the run says how much others disturbed it."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return float("nan"), own.ru_utime + own.ru_stime
    ticks = [int(v) for v in fields]
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK"), own.ru_utime + own.ru_stime


def example_path(name: str) -> Path:
    """examples/models/<name>.onnx, built by examples/build_models.py when missing."""
    path = ROOT / "examples" / "models" / f"{name}.onnx"
    if not path.is_file():
        sys.path.insert(0, str(ROOT / "examples"))
        import build_models

        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(getattr(build_models, name)(), path)
    return path


def servers(count: int, profile: str, extra: list[Path]) -> Cluster:
    """`count` identical servers of `profile` on a 25 Gb/s network."""
    data = {
        "name": f"{count}-servers",
        "devices": [{"name": f"s{i}", "profile": profile} for i in range(count)],
        "default_link": {"gbps": 25, "latency_ms": 0.05},
        "input_at": "s0",
        "output_to": "s0",
    }
    return parse_cluster(data, "bench.yaml", ROOT, extra)


def pick_profile(wanted: str | None) -> str:
    """The given profile, or the first built-in CPU profile this host can run."""
    profiles = load_profiles()
    for name in [wanted] if wanted else CPU_PROFILES:
        reason = profiling.why_not_measurable(device_from_profile(profiles[name], "d"))
        if reason is None:
            return name
        if wanted:
            sys.exit(f"{name}: {reason}")
    sys.exit("no built-in CPU profile matches this host")


def measured_device(profile: str, measurement: profiling.HostMeasurement) -> Device:
    """The profile with the measured peak and bandwidth (as `nndeploy profile` writes it)."""
    original = load_profiles()[profile]
    data = measured_profile_data(
        original,
        measurement.peak_gflops,
        measurement.mem_bw_gbytes_s,
        measurement.threads,
        measurement.host,
        measurement.measured_at,
    )
    return device_from_profile(parse_profile(data, f"measured {profile}"), "d")


def evaluate(
    name: str,
    path: Path,
    profile: str,
    stages: list[int],
    threads: int,
    models: dict[str, tuple[CostModel, Device]],
) -> list[dict[str, float]]:
    """Plan, split and time `path` for every stage count; one row per stage."""
    shapes = SHAPES if name == "tiny_bert" else None
    graph = load_graph(path, shapes)
    prepared = load_prepared_model(path, shapes)
    rows = []
    for count in stages:
        cluster = servers(count, profile, [])
        the_plan = plan(graph, cluster, "throughput")
        for stage, stage_model in zip(the_plan.stages, split(prepared, the_plan), strict=True):
            row = {"split": count, "stage": stage.index, "nodes": len(stage.nodes)}
            row["meas"] = profiling.model_ms(stage_model, threads, budget_s=1.5)
            for column, (model, device) in models.items():
                row[column] = stage_ms(model, graph, device, stage.nodes)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--profile", default=None, help="device profile to stand in for (default: auto)")
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    args = parser.parse_args()
    profile = pick_profile(args.profile)
    started = time.perf_counter()
    busy_before, own_before = busy_cpu_seconds()
    train_paths = [ZOO / f"light_{n}.onnx" for n in TRAIN]
    measurement = profiling.profile_host(
        args.threads, train_paths, progress=lambda s: print(f"# measuring {s}")
    )
    sweep = [s for s in measurement.samples if s.source == "sweep"]
    peak, bandwidth = measurement.peak_gflops, measurement.mem_bw_gbytes_s
    spec_device = device_from_profile(load_profiles()[profile], "d")
    measured = measured_device(profile, measurement)
    models: dict[str, tuple[CostModel, Device]] = {
        "spec": (RooflineCostModel(), spec_device),
        "peak": (RooflineCostModel(), measured),
        "sweep": (
            CalibratedCostModel(Calibration({profile: fit_device(sweep, peak, bandwidth, profile)})),
            measured,
        ),
        "cal": (
            CalibratedCostModel(
                Calibration({profile: fit_device(measurement.samples, peak, bandwidth, profile)})
            ),
            measured,
        ),
    }
    host = measurement.host
    print(
        f"# host {host['hostname']}: {host['cpu']}, {host['cpus']} CPUs; "
        f"onnxruntime, {args.threads} thread(s), graph optimisation '{profiling.OPTIMIZATION}'"
    )
    print(
        f"# profile {profile}: spec {spec_device.peak_gflops_for('float32'):,.0f} GFLOP/s, "
        f"{spec_device.mem_bw_gbytes_s:,.1f} GB/s; measured {peak:,.1f} GFLOP/s, {bandwidth:,.1f} GB/s"
    )
    print(
        f"# training samples: {len(sweep)} sweep + {len(measurement.samples) - len(sweep)} nodes of "
        f"{', '.join(TRAIN)}; held out: {', '.join(HELD_OUT + EXAMPLES)}"
    )
    header = f"{'model':<13}{'split':>6}{'stage':>6}{'nodes':>6}{'meas ms':>10}" + "".join(
        f"{c + ' ms':>10}{'err':>7}" for c in COLUMNS
    )
    print(header)
    summary: dict[str, dict[str, list[float]]] = {}
    paths = {n: ZOO / f"light_{n}.onnx" for n in HELD_OUT} | {n: example_path(n) for n in EXAMPLES}
    for name, path in paths.items():
        rows = evaluate(name, path, profile, args.stages, args.threads, models)
        errors = summary.setdefault(name, {c: [] for c in COLUMNS})
        for row in rows:
            line = f"{name:<13}{row['split']:>6}{row['stage']:>6}{row['nodes']:>6}{row['meas']:>10.3f}"
            for column in COLUMNS:
                error = (row[column] - row["meas"]) / row["meas"]
                errors[column].append(abs(error))
                line += f"{row[column]:>10.3f}{100 * error:>+6.0f}%"
            print(line, flush=True)
    print("\nmedian |pred - meas| / meas per held-out model (spec, peak: before; sweep, cal: after):")
    print(f"{'model':<13}" + "".join(f"{c:>9}" for c in COLUMNS))
    for name, errors in summary.items():
        print(f"{name:<13}" + "".join(f"{100 * statistics.median(errors[c]):>8.1f}%" for c in COLUMNS))
    every = {c: [e for errors in summary.values() for e in errors[c]] for c in COLUMNS}
    stage_count = len(every["spec"])
    print(
        f"{'all stages':<13}" + "".join(f"{100 * statistics.median(every[c]):>8.1f}%" for c in COLUMNS),
        f"  ({stage_count} stages)",
    )
    seconds = time.perf_counter() - started
    busy_after, own_after = busy_cpu_seconds()
    others = (busy_after - busy_before) - (own_after - own_before)
    print(
        f"# {seconds:.0f} s; other processes kept the CPUs busy for {max(others, 0.0):.0f} of "
        f"{seconds * (os.cpu_count() or 1):.0f} CPU-seconds meanwhile (timings are only as quiet as that)"
    )


if __name__ == "__main__":
    main()
