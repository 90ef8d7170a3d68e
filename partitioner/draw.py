"""Drawings of a plan: the model graph with every node coloured by its stage and every cut edge marked,
as Graphviz DOT, SVG (rendered by Graphviz) or a self-contained HTML page."""

from __future__ import annotations

import html
import shutil
import subprocess
from pathlib import Path

import graphviz

from nndeploy.errors import PlanError
from nndeploy.types import Graph, Plan

STAGE_COLOURS = ("#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5")
FORMATS = (".dot", ".gv", ".svg", ".html")


def plan_dot(graph: Graph, plan: Plan) -> str:
    """DOT source: one box per node, filled with its stage's colour; edges that cross stages in red."""
    stage_of = {name: stage.index for stage in plan.stages for name in stage.nodes}
    # Graphviz reads "a:b" as node a, port b: use plain generated ids and put the names in labels.
    node_id = {node.name: f"node{i}" for i, node in enumerate(graph.nodes)}
    producer = {out: node.name for node in graph.nodes for out in node.outputs}
    dot = graphviz.Digraph("plan", graph_attr={"rankdir": "TB", "fontname": "Helvetica", "labelloc": "t"})
    dot.attr(label=f"{Path(plan.model_path).name} on {plan.cluster.name}: {len(plan.stages)} stage(s)")
    dot.attr("node", shape="box", style="filled,rounded", fontname="Helvetica", fontsize="10")
    dot.attr("edge", color="#777777", arrowsize="0.6", fontname="Helvetica", fontsize="9")
    for stage in plan.stages:
        with dot.subgraph(name=f"cluster_stage{stage.index}") as box:
            box.attr(label=f"stage {stage.index}: {stage.device} ({stage.compute_ms:.2f} ms)", style="dashed")
            colour = STAGE_COLOURS[stage.index % len(STAGE_COLOURS)]
            for name in stage.nodes:
                box.node(node_id[name], label=f"{name}\\n{_op(graph, name)}", fillcolor=colour)
    inputs = {tensor: f"input{i}" for i, tensor in enumerate(graph.inputs)}
    for tensor, ident in inputs.items():
        dot.node(ident, label=tensor, shape="ellipse", style="solid")
    for node in graph.nodes:
        for tensor in node.inputs:
            source = node_id[producer[tensor]] if tensor in producer else inputs.get(tensor)
            if source is None:
                continue
            cut = tensor in producer and stage_of[producer[tensor]] != stage_of[node.name]
            attrs = {"color": "#d62728", "penwidth": "2.0", "label": _mb(graph, tensor)} if cut else {}
            dot.edge(source, node_id[node.name], **attrs)
    for i, tensor in enumerate(graph.outputs):
        dot.node(f"output{i}", label=tensor, shape="ellipse", style="solid")
        if tensor in producer:
            dot.edge(node_id[producer[tensor]], f"output{i}")
    return dot.source


def write_drawing(graph: Graph, plan: Plan, path: str | Path) -> Path:
    """Write the drawing to `path`; the format follows its suffix (.dot/.gv, .svg, .html)."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in FORMATS:
        raise PlanError(f"{path}: cannot draw to '{suffix or 'no suffix'}'; use one of {', '.join(FORMATS)}")
    source = plan_dot(graph, plan)
    if suffix in (".dot", ".gv"):
        target.write_text(source, encoding="utf-8")
    elif suffix == ".svg":
        target.write_text(render_svg(source), encoding="utf-8")
    else:
        target.write_text(_html_page(plan, render_svg(source)), encoding="utf-8")
    return target


def render_svg(source: str) -> str:
    """Lay out DOT source with Graphviz and return SVG (the graphviz-pure wheel, or a system `dot`)."""
    engine = shutil.which("graphviz-pure") or shutil.which("dot")
    if engine is None:
        raise PlanError(
            "drawing SVG needs Graphviz: pip install graphviz-pure (or apt-get install graphviz); "
            "or write .dot instead"
        )
    done = subprocess.run([engine, "-Tsvg"], input=source.encode(), capture_output=True, timeout=600)
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise PlanError(f"Graphviz could not lay out the plan: {message[-1] if message else 'no message'}")
    return done.stdout.decode()


def _op(graph: Graph, name: str) -> str:
    return next(node.op_type for node in graph.nodes if node.name == name)


def _mb(graph: Graph, tensor: str) -> str:
    return f"{graph.tensors[tensor].nbytes / 1e6:.2f} MB" if tensor in graph.tensors else ""


def _html_page(plan: Plan, svg: str) -> str:
    """A self-contained page: the stage table, then the drawing."""
    rows = "".join(
        f"<tr><td style='background:{STAGE_COLOURS[s.index % len(STAGE_COLOURS)]}'>{s.index}</td>"
        f"<td>{html.escape(s.device)}</td><td>{len(s.nodes)}</td><td>{s.compute_ms:.3f}</td>"
        f"<td>{s.transfer_ms:.3f}</td><td>{s.mem_bytes / 2**20:.1f}</td></tr>"
        for s in plan.stages
    )
    title = html.escape(f"{Path(plan.model_path).name} on {plan.cluster.name}")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>nndeploy plan: {title}</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>"
        f"<h1>{title}</h1><p>objective: {plan.objective}; predicted latency {plan.latency_ms:.3f} ms; "
        f"throughput {plan.throughput_per_s:.1f}/s; bottleneck: {html.escape(plan.bottleneck)}</p>"
        "<table><tr><th>stage</th><th>device</th><th>ops</th><th>compute ms</th><th>transfer ms</th>"
        f"<th>memory MiB</th></tr>{rows}</table><div>{svg}</div></body></html>"
    )
