"""Cutting a prepared ONNX model into runnable sub-models, one per group of its nodes.

The plan's stages and a stage's TVM / onnxruntime parts are both cut here: each group's model receives
the tensors earlier groups (or the model's inputs) produce, carries the weights its nodes read, and
sends the tensors it is asked to send.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import onnx
from onnx import helper

from nndeploy.errors import SplitError


@dataclass(frozen=True)
class Group:
    """Nodes (by name, in execution order) cut into one model, the tensors it must send on, and the
    words naming it in errors and in the model's doc string (e.g. 'stage 2')."""

    label: str
    nodes: tuple[str, ...]
    sends: tuple[str, ...]


def value_infos(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Every tensor's declared type by name: graph inputs, value_info and outputs."""
    graph = model.graph
    return {vi.name: vi for vi in (*graph.input, *graph.value_info, *graph.output)}


def cut(
    model: onnx.ModelProto, groups: Sequence[Group], name_suffix: str = "", independent: bool = False
) -> list[onnx.ModelProto]:
    """One ONNX model per group, in order; a group may only read what the model's inputs and earlier
    groups produce (with `independent`, what any node produces: groups cut to be tried on their own).
    Each model's inputs are the tensors it reads from outside itself, its outputs the group's `sends`
    that it produces itself."""
    graph = model.graph
    by_name = {node.name: node for node in graph.node}
    initializers = {init.name: init for init in graph.initializer}
    types = value_infos(model)
    available = {vi.name for vi in graph.input if vi.name not in initializers}
    if independent:
        available.update(name for node in graph.node for name in node.output if name)
    models = []
    for index, group in enumerate(groups):
        nodes = [by_name[name] for name in group.nodes]
        produced: set[str] = set()
        needed: list[str] = []
        weights: list[str] = []
        for node in nodes:
            for name in node_inputs(node):
                if name in initializers:
                    if name not in weights:
                        weights.append(name)
                elif name not in produced and name not in needed:
                    if name not in available:
                        raise SplitError(
                            f"{group.label} needs tensor '{name}' (input of node '{node.name}') "
                            "before any earlier part produces it: the parts would form a cycle; "
                            "re-run nndeploy plan"
                        )
                    needed.append(name)
            produced.update(out for out in node.output if out)
        sent = [name for name in group.sends if name in produced]
        unknown = [name for name in (*needed, *sent) if name not in types]
        if unknown:
            raise SplitError(f"tensor '{unknown[0]}' has no known type or shape; run nndeploy plan again")
        sub_graph = helper.make_graph(
            nodes,
            f"{graph.name or 'model'}_{name_suffix or 'part'}{index}",
            inputs=[types[name] for name in needed],
            outputs=[types[name] for name in sent],
            initializer=[initializers[name] for name in weights],
            value_info=[types[name] for name in sorted(produced - set(sent)) if name in types],
        )
        sub_model = helper.make_model(
            sub_graph,
            opset_imports=list(model.opset_import),
            ir_version=model.ir_version,
            producer_name="nndeploy",
            functions=list(model.functions),
        )
        models.append(sub_model)
        available.update(produced)
    return models


def node_inputs(node: onnx.NodeProto) -> Iterable[str]:
    """A node's non-empty inputs plus outer-scope names its subgraphs (If/Loop/Scan bodies) read."""
    yield from (name for name in node.input if name)
    for attribute in node.attribute:
        for subgraph in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
            yield from _outer_names(subgraph)


def _outer_names(graph: onnx.GraphProto) -> Iterable[str]:
    """Names a subgraph reads but does not define itself."""
    defined = {vi.name for vi in graph.input} | {init.name for init in graph.initializer}
    for node in graph.node:
        for name in node_inputs(node):
            if name not in defined:
                yield name
        defined.update(node.output)
