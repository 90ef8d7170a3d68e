"""`nndeploy check FILE`: validate a cluster.yaml or a device profile and show what nndeploy reads from it
(devices and every pair's link, or the profile's figures). Problems exit 2, all listed at once."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from nndeploy.cli.common import err, out


def register(app: typer.Typer) -> None:
    """Add this module's command to the main app."""
    app.command("check")(check_command)


def check_command(
    path: Annotated[Path, typer.Argument(metavar="FILE", help="A cluster.yaml or a device profile YAML.")],
    profiles: Annotated[
        list[Path] | None, typer.Option("--profiles", help="Extra profile files or folders (for a cluster).")
    ] = None,
) -> None:
    """Validate a cluster.yaml (devices, every pair's link) or a device profile (docs/cluster-yaml.md)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        data = None  # the loaders below give the precise one-line error
    if isinstance(data, dict) and "devices" not in data and ("tvm_target" in data or "kind" in data):
        _check_profile(path)
    else:
        _check_cluster(path, profiles or [], data if isinstance(data, dict) else {})


def _check_profile(path: Path) -> None:
    from nndeploy.targets.devices.registry import load_profile_file

    profile = load_profile_file(path)
    table = Table(title=f"{path}: profile '{profile.name}' is valid")
    table.add_column("key")
    table.add_column("value", overflow="fold")
    rows = [
        ("description", profile.description),
        ("kind / arch", f"{profile.kind} / {profile.arch}"),
        ("tvm_target", str(profile.tvm_target)),
        ("peak_gflops", ", ".join(f"{k}: {v:g}" for k, v in sorted(profile.peak_gflops.items()))),
        ("mem_bw_gbytes_s", f"{profile.mem_bw_gbytes_s:g} GB/s (gigabytes)"),
        ("host_link_gbytes_s", f"{profile.host_link_gbytes_s:g} GB/s (gigabytes)"),
        ("memory", f"{profile.mem_bytes / 2**30:.1f} GiB"),
        ("launch_overhead_us", f"{profile.launch_overhead_us:g}"),
        ("ops", "all" if profile.ops is None else ", ".join(sorted(profile.ops))),
        ("dtypes", ", ".join(sorted(profile.dtypes))),
    ]
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)


def _check_cluster(path: Path, profiles: list[Path], raw: dict[str, Any]) -> None:
    from nndeploy.targets.devices.cluster import load_cluster

    cluster = load_cluster(path, profiles)
    devices = Table(title=f"{path}: cluster '{cluster.name}' is valid: {len(cluster.devices)} device(s)")
    for column in ("device", "profile", "kind", "arch", "host", "role"):
        devices.add_column(column, no_wrap=column in ("device", "profile"))
    for device in cluster.devices:
        role = [
            word
            for word, name in (("input", cluster.source), ("output", cluster.sink))
            if name == device.name
        ]
        devices.add_row(
            device.name, device.profile, device.kind, device.arch, device.host or "-", ", ".join(role)
        )
    out.print(devices)
    if len(cluster.devices) < 2:
        return
    stated = {
        frozenset(link["between"])
        for link in raw.get("links") or []
        if isinstance(link, dict) and isinstance(link.get("between"), list)
    }
    links = Table(title="links (gbps: gigabits per second)")
    for column in ("between", "gbps", "latency ms", "from"):
        links.add_column(column, no_wrap=column == "between")
    guessed = []
    for a, b in combinations([d.name for d in cluster.devices], 2):
        link = cluster.link(a, b)
        assert link is not None
        if frozenset((a, b)) in stated:
            origin = "links"
        elif cluster.guessed(a, b):
            origin = "[yellow]built-in default (a guess)[/]"
            guessed.append(f"{a} and {b}")
        elif any({x.a, x.b} == {a, b} for x in cluster.links):
            origin = "same host (the profiles' host_link_gbytes_s)"
        else:
            origin = "default_link"
        links.add_row(f"{a} <-> {b}", f"{link.gbps:g}", f"{link.latency_ms:g}", origin)
    out.print(links)
    if guessed:
        err.print(
            f"[yellow]warning:[/] {len(guessed)} pair(s) use the built-in default link "
            f"({cluster.default_link.gbps:g} Gb/s, {cluster.default_link.latency_ms:g} ms): "
            f"{', '.join(guessed)}; "
            "give them links entries (or a default_link you mean) if the plan may send data between them",
            highlight=False,
            soft_wrap=True,
        )
