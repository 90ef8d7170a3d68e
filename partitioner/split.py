"""The `split` verb: cut a prepared model into one runnable ONNX model per stage of a plan.

Deciding is separate from doing: the plan says which nodes go where; this module only checks the plan
matches the model and cuts it (`nndeploy.cutting`), refusing stages that would need a tensor from a later
stage.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from nndeploy.cutting import Group, cut
from nndeploy.errors import SplitError
from nndeploy.types import Plan

# Stage models above this many bytes of weights keep them in a side file (protobuf's 2 GiB limit).
EXTERNAL_DATA_THRESHOLD = 1 << 30


def split(model: onnx.ModelProto, plan: Plan) -> list[onnx.ModelProto]:
    """One ONNX model per stage of `plan`, cut from the prepared `model` the plan was made from."""
    by_name = {node.name for node in model.graph.node}
    planned = [name for stage in plan.stages for name in stage.nodes]
    missing = [name for name in planned if name not in by_name]
    if missing:
        raise SplitError(
            f"the plan names {len(missing)} node(s) the model does not have (e.g. '{missing[0]}'); "
            "the model changed since planning: run nndeploy plan again"
        )
    unplanned = sorted(by_name - set(planned))
    if unplanned or len(planned) != len(set(planned)):
        raise SplitError(
            f"the plan does not place every node exactly once (e.g. '{(unplanned or planned)[0]}'); "
            "run nndeploy plan again"
        )
    groups = [
        Group(f"stage {stage.index}", stage.nodes, tuple(t.name for t in stage.outputs))
        for stage in plan.stages
    ]
    models = cut(model, groups, "stage")
    for stage, stage_model in zip(plan.stages, models, strict=True):
        stage_model.doc_string = f"stage {stage.index} of {Path(plan.model_path).name} on {stage.device}"
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
