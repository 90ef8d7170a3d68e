"""The compiler half of the command line: compile, verify, inspect, and the aarch64 emulator."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from nndeploy.cli.common import (
    FallbackOption,
    JsonOption,
    err,
    out,
    print_json,
    read_build,
    write_stage_models,
)
from nndeploy.cli.tune import tune_command
from nndeploy.errors import ArtifactError, BuildError, ModelError

EXIT_MISMATCH = 1

emulator_app = typer.Typer(no_args_is_help=True, help="The emulated aarch64 environment edge stages run in.")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command("compile")(compile_command)
    app.command("verify")(verify_command)
    app.command("inspect")(inspect_command)
    app.command("tune")(tune_command)
    app.add_typer(emulator_app, name="emulator")


def schedules_text(counts: dict[str, int]) -> str:
    """Where a tuned build's kernels got their schedules, in words."""
    total = sum(counts.values())
    return (
        f"{total} kernels: {counts.get('tuned', 0)} from tuning records, {counts.get('transferred', 0)} "
        f"transferred from tuned kernels of the same kind, {counts.get('plain', 0)} with the plain schedule"
    )


def compile_command(
    plan_file: Annotated[Path, typer.Argument(metavar="PLAN", help="plan.json written by nndeploy plan.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The build folder.")] = Path("build"),
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Stages built in parallel.")] = 1,
    fallback: FallbackOption = None,
    model: Annotated[
        Path | None, typer.Option("--model", help="The model, if it moved since planning.")
    ] = None,
    db: Annotated[
        Path | None,
        typer.Option("--db", help="Tuning database (nndeploy tune): apply its schedules; nothing is tuned."),
    ] = None,
    best_of: Annotated[
        bool | None,
        typer.Option(
            "--best-of/--no-best-of",
            help="Time each stage this machine can run against onnxruntime running the same nodes, region "
            "by region, and keep the faster (flagged like a fallback); with --db also the untuned build. "
            "On by default (env NNDEPLOY_BEST_OF=0 turns it off); --no-best-of keeps pure TVM.",
            show_default=False,
        ),
    ] = None,
    shipped: Annotated[
        bool,
        typer.Option(
            "--shipped/--no-shipped",
            help="Use the tuning knowledge shipped with nndeploy for the device's CPU (schedules tuned on "
            "a corpus of models, carried over to new shapes; no trials run); --no-shipped: TVM's defaults.",
        ),
    ] = True,
    check: Annotated[
        bool,
        typer.Option(
            "--check/--no-check",
            help="Run every TVM-built part on sample inputs against onnxruntime as it is built; a part "
            "that differs goes to onnxruntime with --fallback, and fails the build without.",
        ),
    ] = True,
    check_atol: Annotated[
        float | None, typer.Option("--check-atol", help="Absolute tolerance of the check (float outputs).")
    ] = None,
    check_rtol: Annotated[
        float | None, typer.Option("--check-rtol", help="Relative tolerance of the check (float outputs).")
    ] = None,
    batch_sizes: Annotated[
        str | None,
        typer.Option(
            "--batch-sizes",
            help="Also build every stage at these batch sizes (e.g. 1,4,8), for serve --max-batch: the "
            "plan's own batch is the main build, each other size a sub-folder batch-<n>.",
        ),
    ] = None,
) -> None:
    """Build every stage of PLAN with TVM for its device; write artifacts and manifest.json."""
    from dataclasses import replace

    from nndeploy.oracle import float_tolerances
    from nndeploy.planfile import read_plan, write_plan
    from nndeploy.targets.artifacts.manifest import Manifest, write_manifest
    from nndeploy.targets.build.best_of_regions import PREFIX as BEST_OF_PREFIX
    from nndeploy.targets.build.check import BuildCheck, check_summary
    from nndeploy.targets.build.record import BuildRecord
    from nndeploy.targets.compile import as_built, compile_plan

    if db is not None and not db.is_dir():
        raise BuildError(f"--db {db}: no such tuning database folder; create it with nndeploy tune")
    if not shipped:  # read by every build worker (spawned with this environment)
        import os

        from nndeploy.targets.tuning.shipped import SWITCH_ENV

        os.environ[SWITCH_ENV] = "0"
    plan = read_plan(plan_file)
    extra_batches = [b for b in parse_batch_sizes(batch_sizes) if b != plan.batch]
    output.mkdir(parents=True, exist_ok=True)

    def build(folder: Path, batch: int | None) -> Manifest:
        """Compile the plan into `folder` (at `batch` instead of the plan's own, if given)."""
        model_path, stage_models = write_stage_models(plan, plan_file, folder / "stages", model, batch)
        write_plan(plan, folder / "plan.json")
        columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
        at = f" at batch {batch}" if batch is not None else ""
        with Progress(*columns, TimeElapsedColumn(), console=out, transient=True) as progress:
            task = progress.add_task(f"building {len(plan.stages)} stage(s){at}", total=len(plan.stages))

            def done(record: BuildRecord) -> None:
                state = "failed" if record.error else "cached" if record.cached else f"{record.seconds:.1f} s"
                progress.console.print(
                    f"  stage {record.stage} on {record.device}{at}: {state}", highlight=False
                )
                progress.advance(task)

            built = compile_plan(
                plan,
                "plan.json",
                stage_models,
                folder,
                jobs,
                fallback.value if fallback else None,
                done,
                model_path=str(model_path.resolve()),
                tuning_db_root=db,
                best_of=best_of,
                check=BuildCheck(float_tolerances(check_atol, check_rtol)) if check else None,
                log=lambda line: progress.console.print(line, highlight=False),
            )
        write_plan(as_built(plan, built, stage_models), folder / "plan.json")
        return built

    manifest = build(output, None)
    if extra_batches and manifest.ok:
        failed_batches = []
        for batch in extra_batches:
            if not build(output / f"batch-{batch}", batch).ok:
                failed_batches.append(batch)
        built_batches = tuple((b, f"batch-{b}") for b in extra_batches if b not in failed_batches)
        manifest = replace(manifest, batches=built_batches)
        write_manifest(manifest, output)
        if failed_batches:
            raise BuildError(
                f"batch size(s) {failed_batches} failed to build (see above); the build serves batch "
                f"{sorted([plan.batch, *(b for b, _ in built_batches)])}"
            )
    table = Table(title=f"build {output} (TVM {manifest.tvm_version})")
    for column in ("stage", "device", "target", "status", "checked", "seconds", "artifact", "sha256"):
        table.add_column(column, justify="right" if column == "seconds" else "left")
    for entry in manifest.stages:
        artifact = entry.artifact
        target = artifact.target if artifact else plan.cluster.device(entry.device).tvm_target
        status = "FAILED" if artifact is None else entry.status.replace("fallback", "onnxruntime fallback")
        if artifact is not None and artifact.options.get("pipeline") == "llvm-metaschedule":
            status += " (tuned)" if db is not None else " (shipped)"
        if artifact is not None and "selected" in artifact.options:
            status = f"{status}, best of {_candidates_text(artifact.options['measured_ms'])}"
        if artifact is not None and entry.cached:
            status += " (cached)"
        table.add_row(
            str(entry.stage),
            entry.device,
            _target_text(target),
            status,
            check_summary(artifact) if artifact else "-",
            f"{entry.build_seconds:.1f}",
            artifact.path if artifact else "-",
            artifact.sha256[:12] if artifact else "-",
        )
    out.print(table)
    for entry in manifest.stages:
        counts = entry.artifact.options.get("schedules") if entry.artifact else None
        if counts:
            out.print(f"stage {entry.stage}: {schedules_text(counts)}", highlight=False)
        if entry.artifact is not None and "best_of" in entry.artifact.options:
            out.print(f"stage {entry.stage}: {best_of_text(entry.artifact.options)}", highlight=False)
    for entry in manifest.stages:
        if entry.artifact is not None and "untuned_because" in entry.artifact.options:
            err.print(
                f"[yellow]warning:[/] stage {entry.stage} is built untuned: "
                f"{entry.artifact.options['untuned_because']}",
                highlight=False,
                soft_wrap=True,
            )
        if entry.artifact is not None and entry.artifact.fallback:
            reason = entry.artifact.options.get("reason", "")
            err.print(
                f"[yellow]warning:[/] stage {entry.stage} runs on onnxruntime, not TVM: {reason}",
                highlight=False,
            )
        moved = entry.artifact.options.get("onnxruntime_nodes", []) if entry.artifact else []
        measured = [node for node in moved if node["reason"].startswith(BEST_OF_PREFIX)]
        if measured:
            err.print(
                f"[yellow]note:[/] stage {entry.stage} runs {len(measured)} node(s) on onnxruntime, measured "
                "faster here than TVM's code for them (--no-best-of keeps TVM)",
                highlight=False,
            )
        for node in moved:
            if node in measured:
                continue
            err.print(
                f"[yellow]warning:[/] stage {entry.stage} runs node '{node['node']}' ({node['op_type']}) on "
                f"onnxruntime: {node['reason']}",
                highlight=False,
            )
    if manifest.batches:
        folders = ", ".join(f"{b} ({folder}/)" for b, folder in manifest.batches)
        out.print(f"batch sizes: {plan.batch} (this folder), {folders}", highlight=False)
    failed = [e for e in manifest.stages if e.artifact is None]
    if failed:
        raise BuildError(
            "; ".join(f"stage {e.stage} failed to build: {e.error}" for e in failed)
            + f" (the other stages' artifacts are in {output})"
        )


def parse_batch_sizes(text: str | None) -> list[int]:
    """'1,4,8' -> [1, 4, 8] (sorted, unique); a one-line error for anything else."""
    if text is None:
        return []
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise BuildError(
            f"--batch-sizes {text!r}: give whole numbers separated by commas, e.g. 1,4,8"
        ) from None
    if not sizes or sizes[0] < 1:
        raise BuildError(f"--batch-sizes {text!r}: every size must be 1 or more, e.g. 1,4,8")
    return sizes


def verify_command(
    build_dir: Annotated[Path, typer.Argument(metavar="BUILD", help="Folder written by nndeploy compile.")],
    samples: Annotated[int, typer.Option("--samples", min=1, help="Random input sets to check.")] = 1,
    inputs: Annotated[
        Path | None, typer.Option("--inputs", help="Model inputs as .npz (by input name).")
    ] = None,
    atol: Annotated[
        float | None, typer.Option("--atol", help="Absolute tolerance for float outputs.")
    ] = None,
    rtol: Annotated[
        float | None, typer.Option("--rtol", help="Relative tolerance for float outputs.")
    ] = None,
    as_json: JsonOption = False,
) -> Any:
    """Compare every stage, and the whole chain, with onnxruntime; exit 1 on a mismatch. Returns the
    report (targets.verify's VerifyReport)."""
    from nndeploy.model_prep import file_sha256
    from nndeploy.oracle import float_tolerances
    from nndeploy.targets.verify import verify_build

    manifest, plan = read_build(build_dir)
    model_path = Path(manifest.model_path)
    if not model_path.is_file():
        raise ModelError(f"{model_path}: the model this build was made from is missing")
    if file_sha256(model_path) != manifest.model_sha256:
        raise ModelError(
            f"{model_path}: the model changed since it was compiled (sha256 differs); compile again"
        )
    stage_models = [build_dir / "stages" / f"stage_{e.stage}.onnx" for e in manifest.stages]
    missing = [str(p) for p in stage_models if not p.is_file()]
    if missing:
        raise ArtifactError(f"{missing[0]}: stage model missing from the build; compile again")
    tolerances = float_tolerances(atol, rtol)
    with err.status("running stages and onnxruntime..."):
        report = verify_build(
            build_dir, manifest, stage_models, model_path, plan.inputs, samples, inputs, tolerances
        )
    if as_json:
        print_json(_verify_json(build_dir, report))
        if report.failed:
            raise typer.Exit(EXIT_MISMATCH)
        return report
    table = Table(title=f"verify {build_dir}: {report.samples} input set(s) against onnxruntime")
    for column in ("check", "device", "executor", "output", "max abs", "max rel", "atol / rtol", "result"):
        table.add_column(column, justify="right" if column.startswith("max") else "left")
    for check in (*report.stages, report.end_to_end):
        colour = {"pass": "green", "FAIL": "red"}.get(check.status, "yellow")
        if not check.comparisons:
            table.add_row(
                check.name,
                check.device,
                check.executor,
                "-",
                "-",
                "-",
                "-",
                f"[{colour}]{check.status}[/]: {check.reason}",
            )
        for c in check.comparisons:
            table.add_row(
                check.name,
                check.device,
                check.executor,
                c.name,
                f"{c.max_abs:.3g}",
                f"{c.max_rel:.3g}",
                f"{c.atol:g} / {c.rtol:g}",
                f"[{colour}]{'pass' if c.ok else 'FAIL'}[/]",
            )
    out.print(table)
    if report.failed:
        err.print(
            "[red]error:[/] outputs differ from onnxruntime beyond tolerance (see FAIL rows)", highlight=False
        )
        raise typer.Exit(EXIT_MISMATCH)
    return report


def _verify_json(build_dir: Path, report: Any) -> dict[str, Any]:
    """verify's report as JSON: build, samples, ok, and per check its outputs' errors and tolerances."""
    checks = []
    for check in (*report.stages, report.end_to_end):
        outputs = [
            {
                "name": c.name,
                "max_abs": float(c.max_abs),
                "max_rel": float(c.max_rel),
                "atol": float(c.atol),
                "rtol": float(c.rtol),
                "ok": bool(c.ok),
            }
            for c in check.comparisons
        ]
        checks.append(
            {
                "check": check.name,
                "device": check.device,
                "executor": check.executor,
                "status": check.status,
                "reason": check.reason,
                "outputs": outputs,
            }
        )
    return {"build": str(build_dir), "samples": report.samples, "ok": not report.failed, "checks": checks}


def inspect_command(
    build_dir: Annotated[Path, typer.Argument(metavar="BUILD", help="Folder written by nndeploy compile.")],
    stage: Annotated[int, typer.Option("--stage", min=0, help="Which stage.")] = 0,
    asm: Annotated[bool, typer.Option("--asm", help="Print the assembly (PTX for GPU stages).")] = False,
    ir: Annotated[bool, typer.Option("--ir", help="Print the LLVM IR.")] = False,
    source: Annotated[
        bool, typer.Option("--source", help="Print the CUDA source (GPU) or LLVM IR (CPU).")
    ] = False,
) -> None:
    """Show the code a stage was compiled to, or (by default) a summary of its instruction mix."""
    from nndeploy.targets.artifacts.manifest import read_manifest
    from nndeploy.targets.inspect import instruction_mix, stage_code, stage_source

    manifest = read_manifest(build_dir)
    entry = {e.stage: e for e in manifest.stages}.get(stage)
    if entry is None or entry.artifact is None:
        stage_source(build_dir, manifest, stage, "asm")  # raises the one-line reason
        return
    is_cuda = entry.device_arch == "cuda"
    if asm or ir or source:
        kind = ("ptx" if is_cuda else "asm") if asm else "ir" if ir or not is_cuda else "cuda"
        sys.stdout.write(stage_code(build_dir, manifest, stage, kind)[1])
        return
    name, text = stage_code(build_dir, manifest, stage, "ptx" if is_cuda else "asm")
    mix = instruction_mix(text, "cuda" if is_cuda else str(entry.artifact.target.get("mtriple", "x86_64")))
    unit = "PTX instructions" if is_cuda else "instructions"
    table = Table(title=f"stage {stage} on {entry.device}: {name} ({mix.total:,} {unit})")
    table.add_column("class")
    table.add_column("count", justify="right")
    for label, count in mix.classes.items():
        table.add_row(label, f"{count:,}")
    out.print(table)
    if mix.top:
        out.print("most common: " + ", ".join(f"{m} {n:,}" for m, n in mix.top), highlight=False)
    out.print(f"see the code: nndeploy inspect {build_dir} --stage {stage} --asm (or --ir / --source)")


@emulator_app.command("setup")
def emulator_setup(
    arch: Annotated[str, typer.Argument(help="Architecture to emulate (aarch64).")] = "aarch64",
) -> None:
    """Install (once, cached) the emulated aarch64 Python + TVM runtime that runs edge stages."""
    from nndeploy.targets.artifacts.emulator import setup_emulator

    emulator = setup_emulator(arch, log=lambda line: err.print(line, highlight=False))
    out.print(f"{arch} emulator ready in {emulator.root.parent}")


@emulator_app.command("status")
def emulator_status(
    arch: Annotated[str, typer.Argument(help="Architecture to emulate (aarch64).")] = "aarch64",
) -> None:
    """Say whether the emulated environment is ready, and what is missing if not."""
    from nndeploy.targets.artifacts.emulator import emulator_dir, find_emulator, missing_prerequisites

    emulator = find_emulator(arch)
    if emulator is not None:
        out.print(f"{arch} emulator ready in {emulator_dir(arch)}")
        return
    missing = missing_prerequisites(arch)
    needs = f"; missing: {', '.join(missing)}" if missing else ""
    raise ArtifactError(f"{arch} emulator not set up{needs}; run nndeploy emulator setup {arch}")


@emulator_app.command("rpc-server")
def emulator_rpc_server(
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 9090,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    arch: Annotated[str, typer.Option("--arch", help="Architecture to emulate (aarch64).")] = "aarch64",
) -> None:
    """Run TVM's RPC server under the emulator until Ctrl-C: `nndeploy tune --rpc` against it tries the
    on-device tuning flow without a board (emulated timings say nothing about a real one)."""
    from nndeploy.targets.artifacts.emulator import find_emulator, start_rpc_server

    emulator = find_emulator(arch)
    if emulator is None:
        raise ArtifactError(f"{arch} emulator not set up; run nndeploy emulator setup {arch}")
    server = start_rpc_server(emulator, host, port)
    out.print(f"TVM RPC server under qemu-{arch} on {host}:{port} (Ctrl-C stops it)", highlight=False)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.terminate()
        server.wait(30)


def best_of_text(options: dict) -> str:
    """What best-of measured for a stage and kept, in words."""
    found = options["best_of"]
    if "skipped" in found:
        return f"best-of not measured: {found['skipped']}"
    names = {"tvm": "TVM", "onnxruntime": "onnxruntime", "tvm+onnxruntime": "TVM + onnxruntime regions"}
    measured = ", ".join(f"{names.get(n, n)} {ms:.2f} ms" for n, ms in found["measured_ms"].items())
    share = options.get("tvm_flop_share")
    runs = f" (TVM runs {share:.0%} of its FLOPs)" if share is not None else ""
    return f"best of {measured} here: {names.get(found['selected'], found['selected'])} kept{runs}"


def _candidates_text(measured: dict[str, float]) -> str:
    return ", ".join(f"{name} {ms:.2f} ms" for name, ms in sorted(measured.items(), key=lambda kv: kv[1]))


def _target_text(target: dict) -> str:
    keys = ("kind", "mcpu", "arch", "mtriple")
    return " ".join(str(target[k]) for k in keys if k in target)
