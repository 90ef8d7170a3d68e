"""plan.json: write a Plan, and read one back after checking it against the versioned JSON Schema."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from nndeploy.errors import PlanError
from nndeploy.types import Plan


@cache
def schema(name: str) -> dict[str, Any]:
    """A JSON Schema shipped in nndeploy/schemas (plan, manifest)."""
    text = resources.files("nndeploy").joinpath(f"schemas/{name}.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def schema_problem(data: Any, name: str) -> str | None:
    """'field.path: what is wrong' (one line) if `data` breaks schema `name`, else None."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema(name))
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is None:
        return None
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
    message = " ".join(error.message.split())
    return f"{where or '(top level)'}: {message[:200]}{'...' if len(message) > 200 else ''}"


def validate_plan_dict(data: Any, source: str = "plan.json") -> None:
    """Raise PlanError naming the first offending field if `data` breaks the plan schema."""
    problem = schema_problem(data, "plan")
    if problem is not None:
        raise PlanError(f"{source}: {problem}")
    devices = {d["name"] for d in data["cluster"]["devices"]}
    for stage in data["stages"]:
        if stage["device"] not in devices:
            raise PlanError(
                f"{source}: stages[{stage['index']}].device: '{stage['device']}' is not in the cluster"
            )


def write_plan(plan: Plan, path: str | Path) -> Path:
    """Write `plan` as indented JSON to `path` (validated first); returns the path."""
    data = plan.to_dict()
    validate_plan_dict(data, str(path))
    target = Path(path)
    if target.parent != Path():
        target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return target


def read_plan(path: str | Path) -> Plan:
    """Load and validate a plan.json."""
    source = Path(path)
    if not source.is_file():
        raise PlanError(f"{path}: no such plan file; create one with nndeploy plan")
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(f"{path}: not valid JSON ({exc}); create one with nndeploy plan") from None
    _upgrade(data)
    validate_plan_dict(data, str(path))
    try:
        return Plan.from_dict(data)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        # The schema checks shapes and types; what it lets through and the types still refuse lands here.
        raise PlanError(
            f"{path}: not a valid plan ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
            "create one with nndeploy plan"
        ) from None


def _upgrade(data: object) -> None:
    """Plans written before the memory bandwidth key said its unit: `mem_bw_gbps` (gigabytes per second,
    despite the name) is now `mem_bw_gbytes_s`."""
    devices = data.get("cluster", {}).get("devices", []) if isinstance(data, dict) else []
    for device in devices if isinstance(devices, list) else []:
        if isinstance(device, dict) and "mem_bw_gbps" in device and "mem_bw_gbytes_s" not in device:
            device["mem_bw_gbytes_s"] = device.pop("mem_bw_gbps")


def resolve_model_path(plan: Plan, plan_path: str | Path) -> Path:
    """Where the plan's model is: as written (from the working directory), else beside the plan file."""
    given = Path(plan.model_path)
    if given.is_file():
        return given
    beside = Path(plan_path).parent / given
    if not given.is_absolute() and beside.is_file():
        return beside
    raise PlanError(f"{plan.model_path}: the plan's model is not there; pass --model PATH")


def plan_text(plan: Plan) -> str:
    """A stable, diffable text form of a plan (one line per stage, figures to 4 significant digits)."""
    lines = [
        f"objective {plan.objective}; batch {plan.batch}; order {plan.topological_order}",
        f"latency_ms {plan.latency_ms:.4g}; throughput_per_s {plan.throughput_per_s:.4g}; "
        f"input_transfer_ms {plan.input_transfer_ms:.4g}; bottleneck {plan.bottleneck}",
    ]
    for stage in plan.stages:
        lines.append(
            f"stage {stage.index} on {stage.device}: {len(stage.nodes)} nodes "
            f"{stage.nodes[0]} .. {stage.nodes[-1]}; "
            f"compute_ms {stage.compute_ms:.4g}; transfer_ms {stage.transfer_ms:.4g}; "
            f"sends {', '.join(t.name for t in stage.outputs)}"
        )
    return "\n".join(lines) + "\n"
