"""`nndeploy tune`: MetaSchedule tuning of a plan's CPU stages into a tuning database folder."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from nndeploy.cli.common import err, out, write_stage_models
from nndeploy.errors import NNDeployError
from nndeploy.types import Plan

if TYPE_CHECKING:
    from nndeploy.targets.tune import TuneReport
    from nndeploy.targets.tuning.remote import Remote

DEFAULT_DB = Path("tuning")


class DurationError(NNDeployError):
    """A --budget or --duration that is not a duration."""


def parse_duration(text: str, option: str = "--budget") -> float:
    """Seconds in '90s', '10m', '1h30m' or a bare number of seconds (`option` names it in errors)."""
    cleaned = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", cleaned):
        return float(cleaned)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(h|m|s)", cleaned)
    if not parts or re.sub(r"\d+(?:\.\d+)?\s*[hms]", "", cleaned).strip():
        raise DurationError(f"{option} '{text}' is not a duration; write e.g. 90s, 10m or 1h30m")
    unit = {"h": 3600.0, "m": 60.0, "s": 1.0}
    return sum(float(value) * unit[u] for value, u in parts)


def _remote(plan: Plan, rpc: str | None, device: str | None) -> tuple[str, Remote] | None:
    """(device name, RPC server) from --rpc and --device; BuildError for a half or wrong pair."""
    from nndeploy.errors import BuildError
    from nndeploy.targets.devices.registry import did_you_mean
    from nndeploy.targets.tuning.remote import parse_remote

    if rpc is None and device is None:
        return None
    if rpc is None or device is None:
        raise BuildError("--rpc HOST:PORT and --device NAME go together: the server runs on that device")
    names = [d.name for d in plan.cluster.devices]
    if device not in names:
        raise BuildError(
            f"--device '{device}' is not in the plan's cluster ({', '.join(names)})"
            + did_you_mean(device, names)
        )
    return device, parse_remote(rpc)


def tune_command(
    plan_file: Annotated[Path, typer.Argument(metavar="PLAN", help="plan.json written by nndeploy plan.")],
    budget: Annotated[
        str, typer.Option("--budget", help="Wall-clock time to spend measuring, e.g. 90s, 10m, 1h.")
    ] = "10m",
    db: Annotated[
        Path, typer.Option("--db", help="Tuning database folder (created; shared by plans and models).")
    ] = DEFAULT_DB,
    trials_per_task: Annotated[
        int, typer.Option("--trials-per-task", min=1, help="A task with this many trials is done.")
    ] = 256,
    model: Annotated[
        Path | None, typer.Option("--model", help="The model, if it moved since planning.")
    ] = None,
    export_best: Annotated[
        Path | None,
        typer.Option(
            "--export-best", help="Then copy the database keeping only each workload's best record (to ship)."
        ),
    ] = None,
    rpc: Annotated[
        str | None,
        typer.Option(
            "--rpc",
            metavar="HOST:PORT",
            help="Time candidates on the device through the TVM RPC server running there "
            "(python -m tvm.exec.rpc_server --port 9090); needs --device.",
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="With --rpc: the plan's device the server runs on.")
    ] = None,
) -> None:
    """Tune PLAN's CPU stages with MetaSchedule, measuring on this machine; resumable, reuses the DB."""
    from nndeploy.planfile import read_plan

    budget_s = parse_duration(budget)
    plan = read_plan(plan_file)
    remote = _remote(plan, rpc, device)
    with tempfile.TemporaryDirectory(prefix="nndeploy-tune-") as scratch:
        _, stage_models = write_stage_models(plan, plan_file, Path(scratch), model)
        try:
            report_ = _tune_with_progress(plan, stage_models, db, budget_s, budget, trials_per_task, remote)
        except KeyboardInterrupt:
            err.print(
                f"interrupted: every trial measured so far is in {db}; tune again to continue",
                highlight=False,
            )
            raise typer.Exit(130) from None
    _print_report(report_, plan_file, db)
    if export_best is not None:
        from nndeploy.targets.tuning.database import export_best as export

        for folder in sorted(p for p in db.iterdir() if p.is_dir()) if db.is_dir() else []:
            workloads, _ = export(folder, export_best / folder.name)
            out.print(f"{export_best / folder.name}: best record of {workloads} workload(s)", highlight=False)


def _tune_with_progress(
    plan: Plan,
    stage_models: list[Path],
    db: Path,
    budget_s: float,
    budget: str,
    trials_per_task: int,
    remote: tuple[str, Remote] | None = None,
) -> TuneReport:
    from nndeploy.targets.tune import tune_plan
    from nndeploy.targets.tuning.tuner import Progress as TuningProgress

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("of {task.fields[budget]}"),
    )
    with Progress(*columns, console=out, transient=True) as progress:
        bar = progress.add_task("extracting tasks", total=budget_s, budget=budget)

        def report(target_key: str, update: TuningProgress) -> None:
            best = f"{update.best_ms:.3f} ms" if update.best_ms is not None else "-"
            progress.update(
                bar,
                completed=min(budget_s, update.elapsed_s),
                description=f"{update.trials} trials  {update.task}: best {best}",
            )

        return tune_plan(plan, stage_models, db, budget_s, trials_per_task, report, remote)


def _print_report(report_: TuneReport, plan_file: Path, db: Path) -> None:
    table = Table(title=f"tuning database {db}")
    columns = (
        "target",
        "devices",
        "stages",
        "tasks",
        "cold weights",
        "were tuned",
        "now tuned",
        "trials",
        "seconds",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("target", "devices") else "right")
    for t in report_.targets:
        table.add_row(
            t.target_key,
            ", ".join(t.devices),
            ", ".join(map(str, t.stages)),
            str(t.tasks),
            str(t.tasks_weights_cold),
            str(t.tasks_already_tuned),
            str(t.tasks_complete),
            str(t.trials),
            f"{t.seconds:.0f}",
        )
    out.print(table)
    for stage, device, reason in report_.skipped:
        err.print(f"[yellow]note:[/] stage {stage} on {device} not tuned: {reason}", highlight=False)
    if report_.targets:
        out.print(
            f"{report_.trials} trials measured; `nndeploy compile {plan_file} --db {db}` applies them "
            "(tune again to continue where this run stopped)",
            highlight=False,
        )
