"""The planner half of the command line: devices, plan, split, and the plan table."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from nndeploy.cli.common import (
    MIB,
    Fallback,
    FallbackOption,
    JsonOption,
    Objective,
    ProfilesOption,
    WideOption,
    compiler_fallback,
    err,
    fits,
    json_output,
    out,
    parse_input_shapes,
    print_json,
    set_wide,
    write_stage_models,
)
from nndeploy.types import Graph, Plan


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command("devices")(devices)
    app.command("plan")(plan)
    app.command("split")(split)


def devices(profiles: ProfilesOption = None, as_json: JsonOption = False, wide: WideOption = False) -> None:
    """List the device-capability registry: built-in profiles plus your own."""
    from nndeploy.targets.devices.registry import device_from_profile, load_profiles

    set_wide(wide)

    if as_json:
        found = []
        for name, profile in sorted(load_profiles(profiles or ()).items()):
            device = device_from_profile(profile, name)
            found.append(
                {
                    "profile": name,
                    "kind": device.kind,
                    "arch": device.arch,
                    "peak_gflops": dict(device.peak_gflops),
                    "mem_bw_gbytes_s": device.mem_bw_gbytes_s,
                    "mem_bytes": device.mem_bytes,
                    "tvm_target": device.tvm_target,
                    "source": str(profile.path),
                }
            )
        print_json(found)
        return

    found_profiles = sorted(load_profiles(profiles or ()).items())
    table = Table(title="device profiles")
    # Profile names are what users type into cluster.yaml: never cut; the other columns fold instead.
    table.add_column("profile", no_wrap=True, min_width=max(len(name) for name, _ in found_profiles))
    for column in ("kind", "arch", "fp32 GFLOP/s", "fp16 GFLOP/s", "mem GB/s", "memory GiB"):
        table.add_column(column, justify="right" if "/" in column or "GiB" in column else "left")
    table.add_column("TVM target", overflow="fold")
    table.add_column("source", overflow="fold")
    for name, profile in found_profiles:
        device = device_from_profile(profile, name)
        target = ", ".join(
            f"{k}={v}" for k, v in device.tvm_target.items() if k in ("kind", "mcpu", "arch", "mtriple")
        )
        table.add_row(
            name,
            device.kind,
            device.arch,
            f"{device.peak_gflops.get('float32', 0):,.0f}",
            f"{device.peak_gflops.get('float16', 0):,.0f}",
            f"{device.mem_bw_gbytes_s:,.0f}",
            f"{device.mem_bytes / 1024**3:,.1f}",
            target,
            profile.path,
        )
    out.print(table)


def plan(
    model: Annotated[Path, typer.Argument(help="The ONNX model.")],
    cluster: Annotated[Path, typer.Option("--cluster", "-c", help="cluster.yaml describing the devices.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the plan.")] = Path(
        "plan.json"
    ),
    objective: Annotated[
        Objective, typer.Option(help="Optimise steady-state throughput or one request's latency.")
    ] = Objective.throughput,
    input_shape: Annotated[
        list[str] | None,
        typer.Option("--input-shape", help="Bind an input's shape: NAME=1x3x224x224 (repeatable)."),
    ] = None,
    batch: Annotated[
        int | None, typer.Option("--batch", min=1, help="Set the first dimension of every input.")
    ] = None,
    graph: Annotated[
        Path | None, typer.Option("--graph", help="Also draw the graph by stage (.svg, .dot or .html).")
    ] = None,
    dump_dir: Annotated[
        Path | None,
        typer.Option("--dump-dir", help="Also save the plan, its drawing (.dot) and every stage model here."),
    ] = None,
    profiles: ProfilesOption = None,
    fallback: FallbackOption = None,
    check_top: Annotated[
        int | None,
        typer.Option(
            "--check-top",
            min=1,
            help="Time the top K candidate plans on this host and keep the best measured one.",
        ),
    ] = None,
    as_json: JsonOption = False,
    wide: WideOption = False,
) -> Plan:
    """Split MODEL into pipeline stages over the devices of a cluster; write plan.json (with --json, also
    print it)."""
    set_wide(wide)
    with json_output(as_json):
        the_plan = _plan(
            model,
            cluster,
            output,
            objective,
            input_shape,
            batch,
            graph,
            dump_dir,
            profiles,
            fallback,
            check_top,
        )
    if as_json:
        print_json(the_plan.to_dict())
    return the_plan


def guessed_pairs(cluster: Any, plan: Plan) -> list[tuple[str, str]]:
    """The device pairs the plan moves data between (input -> stages -> output) whose link is the
    unstated default."""
    hops = [cluster.source, *(stage.device for stage in plan.stages), cluster.sink]
    pairs = {tuple(sorted((a, b))) for a, b in pairwise(hops) if cluster.guessed(a, b)}
    return sorted(pairs)  # type: ignore[arg-type]


def _plan(
    model: Path,
    cluster: Path,
    output: Path,
    objective: Objective,
    input_shape: list[str] | None,
    batch: int | None,
    graph: Path | None,
    dump_dir: Path | None,
    profiles: list[Path] | None,
    fallback: Fallback | None,
    check_top: int | None,
) -> Plan:
    from nndeploy.graph import check_fixed_outputs, load_graph_and_model
    from nndeploy.partitioner.planner import plan as make_plan
    from nndeploy.planfile import write_plan
    from nndeploy.targets.devices.cluster import load_cluster

    the_cluster = load_cluster(cluster, profiles or ())
    the_graph, prepared = load_graph_and_model(model, parse_input_shapes(input_shape or []), batch)
    check_fixed_outputs(the_graph)
    for warning in the_graph.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    uncompilable = compiler_fallback(prepared, fallback is not None)
    from nndeploy.cli.profile import measured_cost_model

    costs = measured_cost_model(profiles or (), the_cluster)
    if check_top is None:
        the_plan = make_plan(the_graph, the_cluster, objective.value, costs, uncompilable)
    else:
        from nndeploy.cli.plan_check import checked_plan

        the_plan = checked_plan(
            model, the_graph, the_cluster, objective.value, costs, check_top, uncompilable
        )
    write_plan(the_plan, output)
    print_plan(the_graph, the_plan)
    guessed = guessed_pairs(the_cluster, the_plan)
    if guessed:
        link = the_cluster.default_link
        pairs = ", ".join(f"{a} and {b}" for a, b in guessed)
        which = "each pair" if len(guessed) > 1 else "the pair"
        err.print(
            f"[yellow]warning:[/] the plan sends data between {pairs} over the built-in default link "
            f"({link.gbps:g} Gb/s, {link.latency_ms:g} ms), a guess: give {which} a links entry in {cluster} "
            "(or a default_link you mean); see docs/cluster-yaml.md",
            highlight=False,
            soft_wrap=True,
        )
    out.print(f"plan written to {output}")
    if graph is not None:
        from nndeploy.partitioner.draw import write_drawing

        write_drawing(the_graph, the_plan, graph)
        out.print(f"graph drawn to {graph}")
    if dump_dir is not None:
        _dump(the_graph, the_plan, dump_dir)
    return the_plan


def split(
    plan_file: Annotated[Path, typer.Argument(metavar="PLAN", help="plan.json written by nndeploy plan.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the stage models.")] = Path(
        "stages"
    ),
    model: Annotated[
        Path | None, typer.Option("--model", help="The model, if it moved since planning.")
    ] = None,
) -> list[Path]:
    """Write one runnable ONNX model per stage of PLAN (stage_0.onnx, stage_1.onnx, ...)."""
    from nndeploy.planfile import read_plan

    the_plan = read_plan(plan_file)
    _, paths = write_stage_models(the_plan, plan_file, output, model)
    table = Table(title=f"{len(paths)} stage model(s) in {output}")
    for column in ("stage", "device", "file", "inputs", "outputs"):
        table.add_column(column)
    for stage, path in zip(the_plan.stages, paths, strict=True):
        table.add_row(
            str(stage.index),
            stage.device,
            path.name,
            ", ".join(t.name for t in stage.inputs),
            ", ".join(t.name for t in stage.outputs),
        )
    out.print(table)
    return paths


def _dump(the_graph: Graph, the_plan: Plan, dump_dir: Path) -> None:
    from nndeploy.partitioner.draw import plan_dot
    from nndeploy.planfile import write_plan

    dump_dir.mkdir(parents=True, exist_ok=True)
    plan_path = write_plan(the_plan, dump_dir / "plan.json")
    (dump_dir / "plan.dot").write_text(plan_dot(the_graph, the_plan), encoding="utf-8")
    _, paths = write_stage_models(the_plan, plan_path, dump_dir / "stages", Path(the_plan.model_path))
    out.print(f"dumped plan, drawing and {len(paths)} stage model(s) to {dump_dir}")


def print_plan(the_graph: Graph, the_plan: Plan) -> None:
    """The plan as a table, then its predictions."""
    ops = {node.name: node.op_type for node in the_graph.nodes}
    table = Table(
        title=f"plan: {Path(the_plan.model_path).name} on {the_plan.cluster.name} ({the_plan.objective})"
    )
    headers = (
        "stage",
        "device",
        "ops",
        "first op",
        "last op",
        "params MB",
        "act out MB",
        "compute ms",
        "transfer ms",
        "memory used / capacity",
        "onnxruntime nodes",
    )
    for header in headers:
        table.add_column(
            header, justify="right" if header.endswith(("MB", "ms")) or header == "ops" else "left"
        )
    rows = []
    for stage in the_plan.stages:
        capacity = the_plan.cluster.device(stage.device).mem_bytes
        first, last = stage.nodes[0], stage.nodes[-1]
        rows.append(
            (
                str(stage.index),
                f"{stage.device} ({the_plan.cluster.device(stage.device).profile})",
                str(len(stage.nodes)),
                f"{first} ({ops.get(first, '?')})",
                f"{last} ({ops.get(last, '?')})",
                f"{stage.param_bytes / 1e6:.2f}",
                f"{sum(t.nbytes for t in stage.outputs) / 1e6:.3f}",
                f"{stage.compute_ms:.3f}",
                f"{stage.transfer_ms:.3f}",
                f"{stage.mem_bytes / MIB:,.1f} / {capacity / MIB:,.0f} MiB "
                f"({100 * stage.mem_bytes / capacity:.1f}%)",
                str(len(stage.fallback)) if stage.fallback else "-",
            )
        )
        table.add_row(*rows[-1])
    if fits(table):
        out.print(table)
    else:  # a narrow terminal: one block per stage instead of rows folded over several lines
        out.print(f"[bold]{table.title}[/]", highlight=False)
        for cells in rows:
            out.print(f"[bold]stage {cells[0]}[/] on {cells[1]}", highlight=False)
            for header, cell in zip(headers[2:], cells[2:], strict=True):
                out.print(f"    {header:<24} {cell}", highlight=False, soft_wrap=True)
    for stage in the_plan.stages:
        for node in stage.fallback:
            out.print(
                f"[yellow]onnxruntime fallback:[/] stage {stage.index} node '{node.node}' ({node.op_type}): "
                f"{node.reason}",
                highlight=False,
            )
    out.print(
        f"predicted latency: [bold]{the_plan.latency_ms:.3f} ms[/] per request "
        f"(input transfer {the_plan.input_transfer_ms:.3f} ms)   "
        f"throughput: [bold]{the_plan.throughput_per_s:,.1f}[/] samples/s (batch {the_plan.batch})",
        highlight=False,
    )
    out.print(
        f"bottleneck: {the_plan.bottleneck or 'none'}   order: {the_plan.topological_order}   "
        f"planned in {the_plan.planner_seconds:.2f} s",
        highlight=False,
    )
