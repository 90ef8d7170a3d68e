"""The `split` verb: cut a prepared model into one runnable ONNX model per stage of a plan.

Deciding is separate from doing: the plan says which nodes go where; this module only cuts, and refuses
plans that do not match the model or whose stages would need a tensor from a later stage.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import onnx
from onnx import helper

from nndeploy.errors import SplitError
from nndeploy.types import Plan

# Stage models above this many bytes of weights keep them in a side file (protobuf's 2 GiB limit).
EXTERNAL_DATA_THRESHOLD = 1 << 30


def split(model: onnx.ModelProto, plan: Plan) -> list[onnx.ModelProto]:
    """One ONNX model per stage of `plan`, cut from the prepared `model` the plan was made from."""
    graph = model.graph
    by_name = {node.name: node for node in graph.node}
    planned = [name for stage in plan.stages for name in stage.nodes]
    missing = [name for name in planned if name not in by_name]
    if missing:
        raise SplitError(
            f"the plan names {len(missing)} node(s) the model does not have (e.g. '{missing[0]}'); "
            "the model changed since planning: run nndeploy plan again"
        )
    unplanned = sorted(set(by_name) - set(planned))
    if unplanned or len(planned) != len(set(planned)):
        raise SplitError(
            f"the plan does not place every node exactly once (e.g. '{(unplanned or planned)[0]}'); "
            "run nndeploy plan again"
        )
    initializers = {init.name: init for init in graph.initializer}
    types = {vi.name: vi for vi in (*graph.input, *graph.value_info, *graph.output)}
    available = {vi.name for vi in graph.input if vi.name not in initializers}
    models = []
    for stage in plan.stages:
        nodes = [by_name[name] for name in stage.nodes]
        produced: set[str] = set()
        needed: list[str] = []
        weights: list[str] = []
        for node in nodes:
            for name in _node_inputs(node):
                if name in initializers:
                    if name not in weights:
                        weights.append(name)
                elif name not in produced and name not in needed:
                    if name not in available:
                        raise SplitError(
                            f"stage {stage.index} needs tensor '{name}' (input of node '{node.name}') "
                            "before any earlier stage produces it: the stages would form a cycle; "
                            "re-run nndeploy plan"
                        )
                    needed.append(name)
            produced.update(out for out in node.output if out)
        sent = [t.name for t in stage.outputs if t.name in produced]
        unknown = [name for name in (*needed, *sent) if name not in types]
        if unknown:
            raise SplitError(f"tensor '{unknown[0]}' has no known type or shape; run nndeploy plan again")
        stage_graph = helper.make_graph(
            nodes,
            f"{graph.name or 'model'}_stage{stage.index}",
            inputs=[types[name] for name in needed],
            outputs=[types[name] for name in sent],
            initializer=[initializers[name] for name in weights],
            value_info=[types[name] for name in sorted(produced - set(sent)) if name in types],
        )
        stage_model = helper.make_model(
            stage_graph,
            opset_imports=list(model.opset_import),
            ir_version=model.ir_version,
            producer_name="nndeploy",
            functions=list(model.functions),
        )
        stage_model.doc_string = f"stage {stage.index} of {Path(plan.model_path).name} on {stage.device}"
        models.append(stage_model)
        available.update(produced)
    return models


def write_stages(models: list[onnx.ModelProto], out_dir: Path) -> list[Path]:
    """Save stage models as out_dir/stage_<i>.onnx (weights beside them when large); returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, stage_model in enumerate(models):
        path = out_dir / f"stage_{index}.onnx"
        weight_bytes = sum(len(t.raw_data) for t in stage_model.graph.initializer)
        external = weight_bytes > EXTERNAL_DATA_THRESHOLD
        onnx.save(
            stage_model,
            str(path),
            save_as_external_data=external,
            all_tensors_to_one_file=True,
            location=f"stage_{index}.onnx.data",
        )
        paths.append(path)
    return paths


def _node_inputs(node: onnx.NodeProto) -> Iterable[str]:
    """A node's non-empty inputs plus outer-scope names its subgraphs (If/Loop/Scan bodies) read."""
    yield from (name for name in node.input if name)
    for attribute in node.attribute:
        for subgraph in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
            yield from _outer_names(subgraph)


def _outer_names(graph: onnx.GraphProto) -> Iterable[str]:
    """Names a subgraph reads but does not define itself."""
    defined = {vi.name for vi in graph.input} | {init.name for init in graph.initializer}
    for node in graph.node:
        for name in _node_inputs(node):
            if name not in defined:
                yield name
        defined.update(node.output)
