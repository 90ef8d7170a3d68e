"""Drawings: every node drawn once, coloured by stage, and exactly the cut edges marked in red."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest

from nndeploy.errors import PlanError
from nndeploy.graph import load_graph
from nndeploy.partitioner.draw import STAGE_COLOURS, deployment_dot, plan_dot, write_drawing
from nndeploy.partitioner.planner import plan

from conftest import servers
from models import skip_model

CUT_COLOUR = "#d62728"


@pytest.fixture
def planned(make_cluster, tmp_path: Path):
    path = tmp_path / "skip.onnx"
    onnx.save(skip_model(), path)
    graph = load_graph(path)
    result = plan(graph, make_cluster(servers(3, profile="raspberry-pi-5", gbps=400.0, latency_ms=1e-4)))
    assert len(result.stages) >= 2
    return graph, result


def cut_pairs(graph, result) -> int:
    """(tensor, consumer) pairs whose producer sits in another stage."""
    stage_of = {name: s.index for s in result.stages for name in s.nodes}
    producer = {out: node.name for node in graph.nodes for out in node.outputs}
    return sum(
        1
        for node in graph.nodes
        for tensor in node.inputs
        if tensor in producer and stage_of[producer[tensor]] != stage_of[node.name]
    )


def test_svg_draws_the_deployment_and_the_model_collapsed_to_its_cuts(planned, tmp_path: Path) -> None:
    graph, result = planned
    stacked = write_drawing(graph, result, tmp_path / "plan.svg").read_text()
    deployment, svg = stacked.split("<svg", 3)[2:]  # the page's own <svg>, then the two drawings
    assert "Gb/s" in deployment and "legend" in deployment and "bottleneck" in deployment
    for stage in result.stages:
        assert f"stage {stage.index}" in deployment and stage.device.replace("-", "&#45;") in deployment
    drawn_nodes = len(re.findall(r'<g id="node\d+" class="node">', svg))
    assert drawn_nodes <= len(graph.nodes) + len(graph.inputs) + len(graph.outputs)
    red_edges = len(
        re.findall(
            r'<g id="edge\d+" class="edge">\s*<title>[^<]*</title>\s*<path fill="none" stroke="' + CUT_COLOUR,
            svg,
        )
    )
    assert red_edges == cut_pairs(graph, result) > 0  # every cut is still drawn
    for stage in result.stages:
        assert f"stage {stage.index}: {stage.device}".replace("-", "&#45;") in svg
        assert STAGE_COLOURS[stage.index].lower() in svg.lower()


def test_resnet50_collapses_to_a_screen(make_cluster) -> None:
    """Collapsed to its cut points, resnet50 on one device is a handful of boxes (the full graph: 16,800 px
    tall), and one stage alone draws only that stage's nodes."""
    from nndeploy.graph import load_graph
    from nndeploy.partitioner.draw import collapsed_dot
    from nndeploy.partitioner.planner import plan as make_plan

    from models import light_model_path

    graph = load_graph(light_model_path("resnet50"))
    result = make_plan(
        graph, make_cluster({"devices": [{"name": "cpu", "profile": "x86-avx2-server"}]}), "latency"
    )
    dot = collapsed_dot(graph, result)
    boxes = re.findall(r"^\t+(?:n\d+|rest\d+) \[", dot, re.MULTILINE)
    assert 2 <= len(boxes) <= 6, dot
    assert f"{len(graph.nodes) - len(boxes) + 1} ops" in dot
    height = float(re.search(r'height="([\d.]+)pt"', render_svg_for(dot)).group(1))
    assert height * 4 / 3 < 1080


def render_svg_for(dot: str) -> str:
    from nndeploy.partitioner.draw import render_svg

    return render_svg(dot)


def test_one_stage_alone(planned) -> None:
    graph, result = planned
    assert len(result.stages) >= 2
    first = result.stages[0]
    dot = plan_dot(graph, result, only=first.index)
    for stage in result.stages:
        for name in stage.nodes:
            assert (f'label="{name}\\n' in dot) == (stage is first), name


def test_dot_and_html_forms(planned, tmp_path: Path) -> None:
    graph, result = planned
    dot = write_drawing(graph, result, tmp_path / "plan.dot").read_text()
    assert dot == deployment_dot(result) + "\n" + plan_dot(graph, result)
    assert dot.startswith("digraph deployment")
    page = write_drawing(graph, result, tmp_path / "plan.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    assert "http://" not in page.replace("http://www.w3.org", "")  # self-contained: nothing fetched
    assert page.count("<details class='stage'>") == len(result.stages) and "<script>" in page
    assert "MFLOP" in page  # hover tooltips
    assert page.count("<tr>") == len(result.stages) + 1  # header + one row per stage


def test_unknown_format_is_refused(planned, tmp_path: Path) -> None:
    graph, result = planned
    with pytest.raises(PlanError, match=r"plan\.png: cannot draw to '\.png'"):
        write_drawing(graph, result, tmp_path / "plan.png")
    assert not (tmp_path / "plan.png").exists()


def test_the_deployment_shows_devices_links_and_the_bottleneck(make_cluster) -> None:
    """A camera on a slow link to a server: the hop over the link is the bottleneck, drawn in red and
    labelled with the link's bandwidth and the bytes it carries (a small cut in KB, not 0.00 MB)."""
    from nndeploy.partitioner.draw import BOTTLENECK
    from nndeploy.partitioner.planner import plan as make_plan

    from models import conv_residual_model

    cluster = make_cluster(
        {
            "devices": [
                {"name": "cam", "profile": "raspberry-pi-5"},
                {"name": "srv", "profile": "x86-avx512-server"},
            ],
            "links": [{"between": ["cam", "srv"], "gbps": 0.01, "latency_ms": 3.0}],
            "input_at": "cam",
            "output_to": "srv",
        }
    )
    import tempfile

    import onnx

    from nndeploy.graph import load_graph

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.onnx"
        onnx.save(conv_residual_model(16), path)
        result = make_plan(load_graph(path), cluster, "throughput")
    dot = deployment_dot(result)
    assert result.bottleneck.startswith("link cam -> srv") or "(inputs)" in result.bottleneck
    assert 'label="cam (raspberry-pi-5)' in dot and 'label="srv (x86-avx512-server)' in dot
    assert "0.01 Gb/s" in dot and " KB, " in dot and "0.00 MB" not in dot
    assert f'color="{BOTTLENECK}"' in dot  # the bottleneck hop
    # Requests arrive inside the camera's box, results leave inside the server's.
    camera = dot[dot.index("subgraph cluster_cam") : dot.index("subgraph cluster_srv")]
    assert "requests arrive" in camera and "results go" in dot[dot.index("subgraph cluster_srv") :]
