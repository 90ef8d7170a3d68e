"""Measured costs on the command line: `nndeploy profile` times this host for the cluster's devices it
can stand in for and writes measured profiles + calibration.json; `plan --profiles FOLDER` reads them
back (`measured_cost_model`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from nndeploy.cli.common import ProfilesOption, out
from nndeploy.errors import ProfileError
from nndeploy.types import Cluster

if TYPE_CHECKING:
    from nndeploy.partitioner.calibration import CalibratedCostModel, Calibration
    from nndeploy.runtime.probe import MeasuredLink
    from nndeploy.targets.measure.profiling import HostMeasurement


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command("profile")(profile_command)


@dataclass(frozen=True)
class ProfileResult:
    """What `profile` did: the calibration, files written, the host measurement, skipped devices."""

    calibration: Calibration
    files: tuple[Path, ...]
    measurement: HostMeasurement
    skipped: dict[str, str]  # device name -> why it was not measured
    devices: dict[str, tuple[str, ...]]  # measured profile -> the cluster's devices using it


def profile(
    cluster: Path,
    output: Path,
    models: Sequence[Path] = (),
    threads: int | None = None,
    profiles: Sequence[Path] = (),
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    quick: bool = False,
) -> ProfileResult:
    """Measure this host for every device profile of `cluster` it can run natively (once: the same
    measurements serve each such profile); write a measured profile YAML per such profile and
    calibration.json into `output`."""
    from nndeploy.partitioner.calibration import Calibration, fit_device
    from nndeploy.runtime.hop import measure_hop
    from nndeploy.targets.devices.cluster import load_cluster
    from nndeploy.targets.devices.measured import find_profile, write_measured_profile
    from nndeploy.targets.measure.profiling import profile_host, why_not_measurable

    the_cluster = load_cluster(cluster, profiles)
    runnable: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    for device in the_cluster.devices:
        reason = why_not_measurable(device)
        if reason is None:
            runnable.setdefault(device.profile, []).append(device.name)
        else:
            skipped[device.name] = f"{device.profile}: {reason}"
    if not runnable:
        reasons = "; ".join(f"{name} ({why})" for name, why in skipped.items())
        raise ProfileError(
            f"no device of cluster '{the_cluster.name}' can be measured on this host: {reasons}"
        )
    output.mkdir(parents=True, exist_ok=True)
    measured = profile_host(
        threads, models, input_shapes, quick, lambda step: out.print(f"[dim]measuring {step} ...[/]")
    )
    fits, files = {}, []
    for name in runnable:
        original = find_profile(name, cluster, profiles)
        spec = {"peak_gflops": original.peak_gflops["float32"], "mem_bw_gbytes_s": original.mem_bw_gbytes_s}
        fits[name] = fit_device(
            measured.samples,
            measured.peak_gflops,
            measured.mem_bw_gbytes_s,
            name,
            threads=measured.threads,
            host=measured.host,
            measured_at=measured.measured_at,
            spec=spec,
        )
        files.append(
            write_measured_profile(
                original,
                output,
                measured.peak_gflops,
                measured.mem_bw_gbytes_s,
                measured.threads,
                measured.host,
                measured.measured_at,
            )
        )
    out.print("[dim]measuring a data-plane hop (loopback gRPC stream) ...[/]")
    calibration = Calibration(fits, measure_hop())
    files.append(calibration.write(output))
    devices = {name: tuple(names) for name, names in runnable.items()}
    return ProfileResult(calibration, tuple(files), measured, skipped, devices)


def profile_command(
    cluster: Annotated[Path, typer.Option("--cluster", "-c", help="cluster.yaml describing the devices.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for the measured profiles and calibration.json.")
    ] = Path("profiles"),
    model: Annotated[
        list[Path] | None,
        typer.Option("--model", help="Also time every node of this model on its own (repeatable)."),
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="Threads to measure with (default: all CPUs).")
    ] = None,
    input_shape: Annotated[
        list[str] | None,
        typer.Option("--input-shape", help="Bind a --model input's shape: NAME=1x3x224x224 (repeatable)."),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Fewer sweep sizes: a rough calibration in seconds.")
    ] = False,
    profiles: ProfilesOption = None,
    links: Annotated[
        bool,
        typer.Option(
            "--links",
            help="Instead: measure the link (bandwidth, latency) between every two devices' nodes of the Ray "
            "cluster at --address, and write the cluster with them to OUTPUT/cluster.yaml.",
        ),
    ] = False,
    address: Annotated[
        str | None, typer.Option("--address", help="With --links: the Ray cluster (HOST:PORT of its head).")
    ] = None,
) -> object:
    """Measure this host for the cluster's devices it can run (peak, bandwidth, per-op times); write
    measured profiles and calibration.json for `plan --profiles FOLDER`. With --links, measure the
    network between the devices' nodes instead."""
    from nndeploy.cli.common import parse_input_shapes

    if links:
        if address is None:
            raise ProfileError("--links measures the devices' nodes of a Ray cluster: give its --address")
        return profile_links(cluster, output, address, profiles or [])

    result = profile(
        cluster,
        output,
        model or [],
        threads,
        profiles or [],
        parse_input_shapes(input_shape or []),
        quick,
    )
    host = result.measurement.host
    table = Table(
        title=f"measured on {host['hostname']} ({host['cpu']}, {result.measurement.threads} threads, "
        f"{result.measurement.seconds:.0f} s)"
    )
    for column in ("device", "profile", "GFLOP/s fp32 (spec)", "GB/s (spec)", "samples", "fit error"):
        table.add_column(column, justify="left" if column in ("device", "profile") else "right")
    for name, fit in result.calibration.devices.items():
        table.add_row(
            ", ".join(result.devices[name]),
            name,
            f"{fit.peak_gflops:,.1f} ({fit.spec['peak_gflops']:,.0f})",
            f"{fit.mem_bw_gbytes_s:,.1f} ({fit.spec['mem_bw_gbytes_s']:,.1f})",
            str(fit.samples),
            f"{100 * fit.fit_error:.1f}%",
        )
    out.print(table)
    hop = result.calibration.hop
    if hop is not None:
        out.print(
            f"a hop between stages costs {hop.fixed_ms:.2f} ms + {hop.ms_per_mib:.2f} ms per MiB "
            "here, beyond its link",
            highlight=False,
        )
    for device, reason in result.skipped.items():
        out.print(f"skipped {device} ({reason})", highlight=False)
    if result.measurement.skipped:
        left_out = result.measurement.skipped
        out.print(
            f"{len(left_out)} op(s) could not be timed on their own, e.g. {left_out[0]}", highlight=False
        )
    out.print(f"wrote {', '.join(str(p) for p in result.files)}", highlight=False)
    out.print(f"use them with: nndeploy plan MODEL --cluster {cluster} --profiles {output}", highlight=False)
    return result


def profile_links(
    cluster: Path, output: Path, address: str, profiles: Sequence[Path] = ()
) -> list[MeasuredLink]:
    """Measure every two devices' link on the Ray cluster at `address` (each device on the node that
    declares its resource) and write `cluster` with those links to output/cluster.yaml."""
    import os

    import yaml

    from nndeploy.runtime.probe import DEFAULT_BYTES
    from nndeploy.runtime.ray_cluster import RayStages
    from nndeploy.targets.devices.cluster import load_cluster

    the_cluster = load_cluster(cluster, profiles)
    names = [device.name for device in the_cluster.devices]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    ray_stages = RayStages(address=address)
    ray_stages.start(names)
    try:
        out.print(f"[dim]measuring {len(pairs)} link(s) on the Ray cluster at {address} ...[/]")
        measured = ray_stages.measure_links(pairs, DEFAULT_BYTES)
    finally:
        ray_stages.stop()
    raw = yaml.safe_load(cluster.read_text())
    raw["links"] = [
        {"between": list(m.between), "gbps": round(m.gbps, 4), "latency_ms": round(m.latency_ms, 3)}
        for m in measured
    ]
    output.mkdir(parents=True, exist_ok=True)
    if raw.get("profiles"):  # relative to the cluster file: keep them pointing at the same folders
        raw["profiles"] = [
            os.path.relpath((cluster.parent / p).resolve(), output.resolve()) for p in raw["profiles"]
        ]
    written = output / "cluster.yaml"
    written.write_text(
        f"# {cluster.name} with its links measured by nndeploy profile --links on {address}\n"
        + yaml.safe_dump(raw, sort_keys=False)
    )
    table = Table(title=f"links measured on the Ray cluster at {address}")
    for column in ("between", "nodes", "Gb/s (declared)", "latency ms (declared)"):
        table.add_column(column, justify="left" if column in ("between", "nodes") else "right")
    for m in measured:
        declared = the_cluster.link(*m.between)
        table.add_row(
            f"{m.between[0]} <-> {m.between[1]}",
            f"{m.hosts[0]} <-> {m.hosts[1]}",
            f"{m.gbps:,.3f} ({declared.gbps:g})" if declared else f"{m.gbps:,.3f}",
            f"{m.latency_ms:.3f} ({declared.latency_ms:g})" if declared else f"{m.latency_ms:.3f}",
        )
    out.print(table)
    out.print(f"wrote {written}; plan with it: nndeploy plan MODEL --cluster {written}", highlight=False)
    return measured


def measured_cost_model(profiles: Sequence[Path], cluster: Cluster) -> CalibratedCostModel | None:
    """A CalibratedCostModel when a --profiles folder holds calibration.json (later folders win), after
    printing which devices it measures; None otherwise (the planner then uses the spec-sheet roofline)."""
    from nndeploy.partitioner.calibration import CALIBRATION_FILE, CalibratedCostModel, Calibration

    found = [Path(p) / CALIBRATION_FILE for p in profiles if (Path(p) / CALIBRATION_FILE).is_file()]
    if not found:
        return None
    calibration = Calibration({})
    for path in found:
        calibration = calibration.merged(Calibration.read(path))
    from nndeploy.partitioner.cost import RooflineCostModel

    # A hop cost stated in cluster.yaml wins over the measured one.
    fallback = RooflineCostModel(cluster.hop) if cluster.hop is not None else None
    model = CalibratedCostModel(calibration, fallback)
    measured = [d for d in cluster.devices if model.calibrated(d)]
    sources = ", ".join(str(p) for p in found)
    if not measured:
        out.print(
            f"{sources} measures none of this cluster's profiles "
            f"({', '.join(sorted(calibration.devices))}): the plan uses spec-sheet costs",
            highlight=False,
        )
        return None
    others = [d.name for d in cluster.devices if not model.calibrated(d)]
    rest = f"; spec-sheet costs for {', '.join(others)}" if others else ""
    out.print(
        f"the plan uses measured costs ({sources}) for "
        f"{', '.join(f'{d.name} ({d.profile})' for d in measured)}{rest}",
        highlight=False,
    )
    return model
