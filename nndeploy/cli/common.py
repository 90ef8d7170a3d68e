"""What the CLI's command modules share: the consoles, common options, and cutting a plan into stage
models (the step both `split` and `compile` start from)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from nndeploy.errors import ModelError, PlanError
from nndeploy.types import FallbackNode, Plan

if TYPE_CHECKING:
    import onnx

    from nndeploy.targets.artifacts.manifest import Manifest

# Piped output keeps full-width tables instead of rich's 80-column default: 200 columns, or
# NNDEPLOY_COLUMNS. (Not COLUMNS: readline, loaded by some parents, exports it as 80 to every child.)
_WIDTH = None if sys.stdout.isatty() else int(os.environ.get("NNDEPLOY_COLUMNS", "") or 200)
out = Console(width=_WIDTH)
err = Console(stderr=True, width=_WIDTH)
WIDE_COLUMNS = 100_000
WideOption = Annotated[bool, typer.Option("--wide", help="Never fold tables to fit the terminal.")]


def set_wide(wide: bool = True) -> None:
    """Print tables at full width whatever the terminal (`--wide`)."""
    if wide:
        out.width = err.width = WIDE_COLUMNS


def fits(table: Any) -> bool:
    """Whether `table` fits the terminal without folding any cell (always, with --wide)."""
    from rich.measure import Measurement

    natural = Measurement.get(out, out.options.update_width(WIDE_COLUMNS), table).maximum
    return natural <= out.width


JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON on stdout (the rest goes to stderr).")
]


@contextlib.contextmanager
def json_output(enabled: bool) -> Iterator[None]:
    """With --json: what the command prints for a person goes to stderr, so stdout holds only the JSON
    the command then prints (`print_json`)."""
    if not enabled:
        yield
        return
    saved = out.file
    out.file = sys.stderr
    try:
        yield
    finally:
        out.file = saved


def print_json(data: object) -> None:
    """`data` as indented JSON on stdout."""
    typer.echo(json.dumps(data, indent=1))


MIB = 1024**2


class Fallback(StrEnum):
    """Executors a stage may fall back to."""

    onnxruntime = "onnxruntime"


class Objective(StrEnum):
    """What the planner optimises."""

    throughput = "throughput"
    latency = "latency"


FallbackOption = Annotated[
    Fallback | None,
    typer.Option(
        "--fallback",
        help="Run the nodes TVM cannot compile (or is known to compute wrongly) on onnxruntime, each run of "
        "them as one region inside its stage; the rest stays TVM-compiled (flagged in every report).",
    ),
]
ProfilesOption = Annotated[
    list[Path] | None,
    typer.Option("--profiles", help="Extra device-profile YAML files or folders (repeatable)."),
]


def write_stage_models(
    the_plan: Plan, plan_file: Path, output: Path, model: Path | None, batch: int | None = None
) -> tuple[Path, list[Path]]:
    """Re-prepare the plan's model exactly as planned (with `batch`: at that batch size instead, the first
    dimension of every input), check it is the same file, and cut it; returns the model's path and the
    stage model paths."""
    from nndeploy.graph import load_prepared_model
    from nndeploy.model_prep import file_sha256
    from nndeploy.partitioner.split import split as split_model
    from nndeploy.partitioner.split import write_stages
    from nndeploy.planfile import resolve_model_path

    model_path = model or resolve_model_path(the_plan, plan_file)
    if not model_path.is_file():
        raise ModelError(f"{model_path}: no such file")
    if file_sha256(model_path) != the_plan.model_sha256:
        raise ModelError(
            f"{model_path}: this is not the model the plan was made for (sha256 differs); "
            "run nndeploy plan again"
        )
    shapes = the_plan.input_shapes
    if batch is not None:
        shapes = {name: (batch, *shape[1:]) for name, shape in shapes.items()}
    prepared = load_prepared_model(model_path, shapes, None)
    return model_path, write_stages(split_model(prepared, the_plan), output)


def read_build(build_dir: Path) -> tuple[Manifest, Plan]:
    """A build folder's manifest and the plan it was compiled from (one-line errors if either is missing)."""
    from nndeploy.planfile import read_plan
    from nndeploy.targets.artifacts.manifest import read_manifest

    manifest = read_manifest(build_dir)
    return manifest, read_plan(build_dir / manifest.plan_file)


def compiler_fallback(
    prepared: onnx.ModelProto, allowed: bool, use_known_wrong: bool = True
) -> dict[str, FallbackNode]:
    """The nodes of a prepared model TVM cannot compile (or computes wrongly), by name; without
    `allowed` (no --fallback) any such node is refused in one line."""
    from nndeploy.targets.frontend.coverage import compiler_problems

    problems = compiler_problems(prepared, use_known_wrong)
    if problems and not allowed:
        listed = "; ".join(f"'{p.node}' ({p.op_type}): {p.reason}" for p in list(problems.values())[:3])
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise PlanError(
            f"TVM cannot compile {len(problems)} node(s): {listed}{more}; pass --fallback onnxruntime to "
            "run them on onnxruntime (flagged in the plan), or change the model"
        )
    return problems


def parse_input_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    """Parse `NAME=1x3x224x224` items (also comma-separated dims) into a shape per input name."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, dims = item.rpartition("=")
        parts = dims.replace(",", "x").split("x")
        if not sep or not name or not all(p.strip().isdigit() for p in parts):
            raise ModelError(f"--input-shape '{item}': expected NAME=D1xD2x..., e.g. input=1x3x224x224")
        shapes[name] = tuple(int(p) for p in parts)
    return shapes
