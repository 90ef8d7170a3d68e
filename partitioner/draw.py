"""Drawings of a plan, as Graphviz DOT, SVG (rendered by Graphviz) or a self-contained HTML page: first the
deployment (devices as boxes with their stages inside, the hops between them labelled with bandwidth, bytes
and milliseconds, where requests arrive and results go, the bottleneck in red, a legend), then the model
graph with every node coloured by its stage and every cut edge marked."""

from __future__ import annotations

import html
import shutil
import subprocess
from pathlib import Path

import graphviz

from nndeploy.errors import PlanError
from nndeploy.types import Graph, Node, Plan

STAGE_COLOURS = ("#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5")
FORMATS = (".dot", ".gv", ".svg", ".html")


def plan_dot(graph: Graph, plan: Plan, only: int | None = None) -> str:
    """DOT source: one box per node, filled with its stage's colour; edges that cross stages in red. With
    `only`, just that stage's nodes, and what reaches them from elsewhere as dashed ellipses."""
    stage_of = {name: stage.index for stage in plan.stages for name in stage.nodes}
    # Graphviz reads "a:b" as node a, port b: use plain generated ids and put the names in labels.
    node_id = {node.name: f"node{i}" for i, node in enumerate(graph.nodes)}
    by_name = {node.name: node for node in graph.nodes}
    producer = {out: node.name for node in graph.nodes for out in node.outputs}
    drawn = {name for name in stage_of if only is None or stage_of[name] == only}
    dot = graphviz.Digraph("plan", graph_attr={"rankdir": "TB", "fontname": "Helvetica", "labelloc": "t"})
    dot.attr(label=f"{Path(plan.model_path).name} on {plan.cluster.name}: {len(plan.stages)} stage(s)")
    dot.attr("node", shape="box", style="filled,rounded", fontname="Helvetica", fontsize="10")
    dot.attr("edge", color="#777777", arrowsize="0.6", fontname="Helvetica", fontsize="9")
    for stage in plan.stages:
        if only is not None and stage.index != only:
            continue
        with dot.subgraph(name=f"cluster_stage{stage.index}") as box:
            box.attr(label=f"stage {stage.index}: {stage.device} ({stage.compute_ms:.2f} ms)", style="dashed")
            colour = STAGE_COLOURS[stage.index % len(STAGE_COLOURS)]
            for name in stage.nodes:
                box.node(
                    node_id[name],
                    label=f"{name}\\n{by_name[name].op_type}",
                    fillcolor=colour,
                    tooltip=_tooltip(graph, by_name[name]),
                )
    inputs = {tensor: f"input{i}" for i, tensor in enumerate(graph.inputs)}
    used_inputs = {t for node in graph.nodes if node.name in drawn for t in node.inputs}
    for tensor, ident in inputs.items():
        if tensor in used_inputs:
            dot.node(ident, label=tensor, shape="ellipse", style="solid")
    outside: dict[str, str] = {}
    for node in graph.nodes:
        if node.name not in drawn:
            continue
        for tensor in node.inputs:
            source = node_id[producer[tensor]] if tensor in producer else inputs.get(tensor)
            if source is None:
                continue
            if tensor in producer and producer[tensor] not in drawn:  # from another stage (only=...)
                source = outside.setdefault(tensor, f"from{len(outside)}")
                dot.node(
                    source,
                    label=f"{tensor}\\n(stage {stage_of[producer[tensor]]})",
                    shape="ellipse",
                    style="dashed",
                )
            cut = tensor in producer and stage_of[producer[tensor]] != stage_of[node.name]
            attrs = {"color": "#d62728", "penwidth": "2.0", "label": _mb(graph, tensor)} if cut else {}
            dot.edge(source, node_id[node.name], **attrs)
    for i, tensor in enumerate(graph.outputs):
        if tensor in producer and producer[tensor] in drawn:
            dot.node(f"output{i}", label=tensor, shape="ellipse", style="solid")
            dot.edge(node_id[producer[tensor]], f"output{i}")
        elif only is None:
            dot.node(f"output{i}", label=tensor, shape="ellipse", style="solid")
    return dot.source


BOTTLENECK = "#d62728"


def deployment_dot(plan: Plan) -> str:
    """DOT source of the deployment: one box per device the plan uses (name, profile, memory used of its
    capacity) holding its stages (ops, compute ms), an arrow per hop (input -> stage 0 -> ... -> output)
    labelled with the link's bandwidth, the bytes sent and the transfer ms; the bottleneck in red."""
    cluster = plan.cluster
    dot = graphviz.Digraph(
        "deployment", graph_attr={"rankdir": "LR", "fontname": "Helvetica", "labelloc": "t"}
    )
    dot.attr(
        label=f"{Path(plan.model_path).name} on {cluster.name} ({plan.objective}): "
        f"{plan.latency_ms:.2f} ms per request, {plan.throughput_per_s:,.1f}/s\\nbottleneck: "
        f"{plan.bottleneck or 'none'}"
    )
    dot.attr("node", shape="box", style="filled,rounded", fontname="Helvetica", fontsize="10")
    dot.attr("edge", fontname="Helvetica", fontsize="9", color="#555555")
    used = {stage.device for stage in plan.stages}
    for device in cluster.devices:
        if device.name not in used and device.name not in (cluster.source, cluster.sink):
            continue
        stages = [s for s in plan.stages if s.device == device.name]
        memory = sum(s.mem_bytes for s in stages)
        with dot.subgraph(name=f"cluster_{device.name}") as box:
            box.attr(
                label=f"{device.name} ({device.profile})\\nmemory {memory / 2**20:,.1f} MiB of "
                f"{device.mem_bytes / 2**30:,.1f} GiB",
                style="rounded",
                color="#333333",
                fontsize="11",
            )
            if device.name == cluster.source:
                box.node("input", label="requests arrive", shape="ellipse", style="solid")
            if device.name == cluster.sink:
                box.node("output", label="results go", shape="ellipse", style="solid")
            for stage in stages:
                hot = plan.bottleneck == f"stage {stage.index} compute on {stage.device}"
                box.node(
                    f"stage{stage.index}",
                    label=f"stage {stage.index}\\n{len(stage.nodes)} ops\\n{stage.compute_ms:.2f} ms",
                    fillcolor=STAGE_COLOURS[stage.index % len(STAGE_COLOURS)],
                    color=BOTTLENECK if hot else "#333333",
                    penwidth="3" if hot else "1",
                )
    first = plan.stages[0]
    hops = [
        (
            "input",
            f"stage{first.index}",
            cluster.source,
            first.device,
            first.inputs,
            plan.input_transfer_ms,
            "inputs",
        )
    ]
    for i, stage in enumerate(plan.stages):
        last = i + 1 == len(plan.stages)
        target, device = (
            ("output", cluster.sink)
            if last
            else (f"stage{plan.stages[i + 1].index}", plan.stages[i + 1].device)
        )
        hops.append(
            (
                f"stage{stage.index}",
                target,
                stage.device,
                device,
                stage.outputs,
                stage.transfer_ms,
                str(stage.index),
            )
        )
    for source, target, a, b, tensors, ms, which in hops:
        nbytes = sum(t.nbytes for t in tensors)
        link = cluster.link(a, b)
        where = f"{link.gbps:g} Gb/s" if link is not None else "same device"
        if which == "inputs":
            hot = plan.bottleneck.endswith("(inputs)")
        else:
            hot = plan.bottleneck in (f"link {a} -> {b}", f"hop out of stage {which}")
        dot.edge(
            source,
            target,
            label=f"{where}\\n{_bytes(nbytes)}, {ms:.2f} ms",
            color=BOTTLENECK if hot else "#555555",
            fontcolor=BOTTLENECK if hot else "#333333",
            penwidth="3" if hot else "1.2",
        )
    legend = (
        "<<table border='0' cellspacing='2'><tr><td align='left'><b>legend</b></td></tr>"
        "<tr><td align='left'>box: a device (profile, memory used of capacity)</td></tr>"
        "<tr><td align='left'>inside: its stages (ops, compute ms)</td></tr>"
        "<tr><td align='left'>arrow: a hop (link Gb/s, bytes, transfer ms)</td></tr>"
        f"<tr><td align='left'><font color='{BOTTLENECK}'>red: the bottleneck</font></td></tr></table>>"
    )
    dot.node("legend", label=legend, shape="note", style="solid", fontsize="9")
    return dot.source


def _bytes(nbytes: int) -> str:
    """A size a person reads: 4.1 KB, 2.63 MB (never 0.00 MB for a small cut)."""
    if nbytes < 1e6:
        return f"{nbytes / 1e3:.1f} KB"
    return f"{nbytes / 1e6:.2f} MB"


def collapsed_dot(graph: Graph, plan: Plan) -> str:
    """DOT source of the model collapsed to its cut points: per stage, only the nodes that receive a tensor
    from outside the stage or send one out of it, with the rest of the stage as one box ("N ops"); cut
    edges in red with their size. Resnet50 on one device becomes a handful of boxes."""
    stage_of = {name: stage.index for stage in plan.stages for name in stage.nodes}
    producer = {out: node.name for node in graph.nodes for out in node.outputs}
    by_name = {node.name: node for node in graph.nodes}
    consumers: dict[str, list[str]] = {}
    for node in graph.nodes:
        for tensor in node.inputs:
            consumers.setdefault(tensor, []).append(node.name)
    entry = {
        n.name
        for n in graph.nodes
        if any(
            t in graph.inputs or (t in producer and stage_of[producer[t]] != stage_of[n.name])
            for t in n.inputs
        )
    }
    exit_ = {
        n.name
        for n in graph.nodes
        if any(
            t in graph.outputs or any(stage_of[c] != stage_of[n.name] for c in consumers.get(t, []))
            for t in n.outputs
        )
    }
    shown = entry | exit_
    dot = graphviz.Digraph("model", graph_attr={"rankdir": "TB", "fontname": "Helvetica", "labelloc": "t"})
    dot.attr(label=f"{Path(plan.model_path).name}\\n{len(graph.nodes)} nodes, collapsed to the cut points")
    dot.attr("node", shape="box", style="filled,rounded", fontname="Helvetica", fontsize="10")
    dot.attr("edge", color="#777777", arrowsize="0.6", fontname="Helvetica", fontsize="9")
    node_id = {node.name: f"n{i}" for i, node in enumerate(graph.nodes)}
    for stage in plan.stages:
        colour = STAGE_COLOURS[stage.index % len(STAGE_COLOURS)]
        hidden = [name for name in stage.nodes if name not in shown]
        with dot.subgraph(name=f"cluster_stage{stage.index}") as box:
            box.attr(label=f"stage {stage.index}: {stage.device} ({stage.compute_ms:.2f} ms)", style="dashed")
            for name in stage.nodes:
                if name in shown:
                    box.node(
                        node_id[name],
                        label=f"{name}\\n{by_name[name].op_type}",
                        fillcolor=colour,
                        tooltip=_tooltip(graph, by_name[name]),
                    )
            if hidden:
                kinds = sorted({by_name[n].op_type for n in hidden})
                summary = ", ".join(kinds[:6]) + (", ..." if len(kinds) > 6 else "")
                box.node(
                    f"rest{stage.index}",
                    label=f"{len(hidden)} ops\\n{summary}",
                    fillcolor=colour,
                    style="filled,rounded,dashed",
                    tooltip=f"stage {stage.index}: {len(hidden)} more ops",
                )

    def shown_as(name: str) -> str:
        return node_id[name] if name in shown else f"rest{stage_of[name]}"

    edges: set[tuple[str, str]] = set()
    for node in graph.nodes:
        for tensor in node.inputs:
            if tensor not in producer:
                continue
            source, target = shown_as(producer[tensor]), shown_as(node.name)
            if source == target:
                continue
            if stage_of[producer[tensor]] != stage_of[node.name]:
                dot.edge(source, target, color=BOTTLENECK, penwidth="2.0", label=_mb(graph, tensor))
            elif (source, target) not in edges:
                edges.add((source, target))
                dot.edge(source, target)
    for i, tensor in enumerate(graph.inputs):
        dot.node(f"input{i}", label=tensor, shape="ellipse", style="solid")
        for name in consumers.get(tensor, []):
            dot.edge(f"input{i}", shown_as(name))
    for i, tensor in enumerate(graph.outputs):
        dot.node(f"output{i}", label=tensor, shape="ellipse", style="solid")
        if tensor in producer:
            dot.edge(shown_as(producer[tensor]), f"output{i}")
    return dot.source


def _tooltip(graph: Graph, node: Node) -> str:
    """What hovering a node shows: its op, output shapes and FLOPs."""
    shapes = ", ".join(f"{t} {list(graph.tensors[t].shape)}" for t in node.outputs if t in graph.tensors)
    return f"{node.name}: {node.op_type} -> {shapes}; {node.flops / 1e6:,.1f} MFLOP"


def write_drawing(graph: Graph, plan: Plan, path: str | Path) -> Path:
    """Write the drawing to `path`; the format follows its suffix (.dot/.gv, .svg, .html)."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in FORMATS:
        raise PlanError(f"{path}: cannot draw to '{suffix or 'no suffix'}'; use one of {', '.join(FORMATS)}")
    source = plan_dot(graph, plan)
    deployment = deployment_dot(plan)
    if suffix in (".dot", ".gv"):
        target.write_text(deployment + "\n" + source, encoding="utf-8")
    elif suffix == ".svg":
        collapsed = render_svg(collapsed_dot(graph, plan))
        target.write_text(_stack_svgs([render_svg(deployment), collapsed]), encoding="utf-8")
    else:
        stages = [render_svg(plan_dot(graph, plan, only=stage.index)) for stage in plan.stages]
        page = _html_page(plan, render_svg(deployment), render_svg(collapsed_dot(graph, plan)), stages)
        target.write_text(page, encoding="utf-8")
    return target


def _stack_svgs(svgs: list[str]) -> str:
    """One SVG document holding `svgs` one below the other (the deployment first)."""
    import re

    px_per_pt = 4 / 3  # Graphviz sizes its SVGs in points; the stack is laid out in CSS pixels
    parts, width, height = [], 0.0, 0.0
    for svg in svgs:
        body = svg[svg.index("<svg") :]
        size = re.search(r'width="([\d.]+)pt"\s+height="([\d.]+)pt"', body)
        w, h = (float(size.group(1)), float(size.group(2))) if size else (600.0, 450.0)
        parts.append(f'<g transform="translate(0,{height:.1f})">{body}</g>')
        width, height = max(width, w * px_per_pt), height + h * px_per_pt + 24
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
        f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'width="{width:.0f}px" height="{height:.0f}px" viewBox="0 0 {width:.0f} {height:.0f}">'
        + "".join(parts)
        + "</svg>\n"
    )


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


def _mb(graph: Graph, tensor: str) -> str:
    return _bytes(graph.tensors[tensor].nbytes) if tensor in graph.tensors else ""


def _html_page(plan: Plan, deployment: str, collapsed: str, stages: list[str]) -> str:
    """A self-contained page (no network): the deployment, the stage table, the model collapsed to its cut
    points, and each stage's full graph behind a fold (one open at a time); every drawing zooms with the
    mouse wheel (or the +/- buttons) and shows a node's op, shapes and FLOPs on hover."""
    rows = "".join(
        f"<tr><td style='background:{STAGE_COLOURS[s.index % len(STAGE_COLOURS)]}'>{s.index}</td>"
        f"<td>{html.escape(s.device)}</td><td>{len(s.nodes)}</td><td>{s.compute_ms:.3f}</td>"
        f"<td>{s.transfer_ms:.3f}</td><td>{s.mem_bytes / 2**20:.1f}</td></tr>"
        for s in plan.stages
    )
    folds = "".join(
        f"<details class='stage'><summary>stage {s.index} on {html.escape(s.device)}: all {len(s.nodes)} "
        f"nodes</summary>{_zoomable(svg)}</details>"
        for s, svg in zip(plan.stages, stages, strict=True)
    )
    title = html.escape(f"{Path(plan.model_path).name} on {plan.cluster.name}")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>nndeploy plan: {title}</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        ".zoom{overflow:auto;border:1px solid #ddd;max-height:80vh}.zoom svg{transform-origin:0 0}"
        "details{margin:6px 0}summary{cursor:pointer;font-weight:bold}</style></head><body>"
        f"<h1>{title}</h1><p>objective: {plan.objective}; predicted latency {plan.latency_ms:.3f} ms; "
        f"throughput {plan.throughput_per_s:.1f}/s; bottleneck: {html.escape(plan.bottleneck)}</p>"
        f"<h2>deployment</h2>{_zoomable(deployment)}"
        "<table><tr><th>stage</th><th>device</th><th>ops</th><th>compute ms</th><th>transfer ms</th>"
        f"<th>memory MiB</th></tr>{rows}</table>"
        f"<h2>model, collapsed to the cut points</h2>{_zoomable(collapsed)}"
        f"<h2>stages</h2>{folds}"
        "<script>"
        "document.querySelectorAll('details.stage').forEach(d=>d.addEventListener('toggle',()=>{"
        "if(d.open)document.querySelectorAll('details.stage').forEach(o=>{if(o!==d)o.open=false})}));"
        "document.querySelectorAll('.zoom').forEach(z=>{let k=1;const s=z.querySelector('svg');"
        "const set=f=>{k=Math.min(8,Math.max(0.1,k*f));s.style.transform='scale('+k+')'};"
        "z.querySelector('.in').onclick=()=>set(1.25);z.querySelector('.out').onclick=()=>set(0.8);"
        "z.addEventListener('wheel',e=>{if(e.ctrlKey||e.altKey){e.preventDefault();"
        "set(e.deltaY<0?1.1:0.9)}},{passive:false})});"
        "</script></body></html>"
    )


def _zoomable(svg: str) -> str:
    """An SVG in a scrolling box with zoom buttons (Ctrl/Alt + wheel zooms too)."""
    body = svg[svg.index("<svg") :] if "<svg" in svg else svg
    return "<div class='zoom'><button class='in'>+</button><button class='out'>-</button>" + body + "</div>"
