"""The Python API: one function per verb, with the command line's behaviour (the same checks, files and
printed tables) and its errors raised as NNDeployError subclasses instead of printed. `import nndeploy`
re-exports these lazily, so importing it stays light.

    import nndeploy
    plan = nndeploy.plan("model.onnx", "cluster.yaml", output="plan.json")
    manifest = nndeploy.compile("plan.json", "build")
    report = nndeploy.verify("build", samples=2)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from nndeploy.errors import BuildError, NNDeployError, VerifyError


def plan(
    model: str | Path,
    cluster: str | Path,
    output: str | Path = "plan.json",
    objective: str = "throughput",
    input_shapes: Sequence[str] = (),
    batch: int | None = None,
    graph: str | Path | None = None,
    profiles: Sequence[str | Path] = (),
    fallback: str | None = None,
) -> Any:
    """Split `model` into pipeline stages over the devices of `cluster` and write `output` (plan.json);
    returns the Plan. `objective` is "throughput" or "latency"; `input_shapes` items are NAME=1x3x224x224;
    `fallback="onnxruntime"` lets nodes TVM cannot compile run on onnxruntime."""
    from nndeploy.cli.common import Fallback, Objective
    from nndeploy.cli.plan import plan as plan_command

    return plan_command(
        Path(model),
        Path(cluster),
        Path(output),
        Objective(objective),
        list(input_shapes) or None,
        batch,
        Path(graph) if graph is not None else None,
        None,
        [Path(p) for p in profiles] or None,
        Fallback(fallback) if fallback is not None else None,
    )


def split(
    plan_file: str | Path, output: str | Path = "stages", model: str | Path | None = None
) -> list[Path]:
    """Write one runnable ONNX model per stage of `plan_file` into `output`; returns their paths."""
    from nndeploy.cli.plan import split as split_command

    return split_command(Path(plan_file), Path(output), Path(model) if model is not None else None)


def compile(
    plan_file: str | Path,
    output: str | Path = "build",
    jobs: int = 1,
    fallback: str | None = None,
    db: str | Path | None = None,
    batch_sizes: Sequence[int] = (),
    check: bool = True,
) -> Any:
    """Build every stage of `plan_file` with TVM for its device into `output`; returns the Manifest.
    `db`: a tuning database to apply; `batch_sizes`: also build at these batch sizes (for serve's
    max_batch). BuildError when a stage fails to build."""
    from nndeploy.cli.build import compile_command
    from nndeploy.cli.common import Fallback
    from nndeploy.targets.artifacts.manifest import read_manifest

    compile_command(
        Path(plan_file),
        Path(output),
        jobs,
        Fallback(fallback) if fallback is not None else None,
        db=Path(db) if db is not None else None,
        check=check,
        batch_sizes=",".join(map(str, batch_sizes)) or None,
    )
    return read_manifest(output)


def verify(build_dir: str | Path, samples: int = 1, inputs: str | Path | None = None) -> Any:
    """Compare every stage of a build, and the whole chain, with onnxruntime; returns the report, and
    raises VerifyError when an output differs beyond tolerance."""
    from nndeploy.cli.build import verify_command

    try:
        return verify_command(Path(build_dir), samples, Path(inputs) if inputs is not None else None)
    except typer.Exit as exc:
        if exc.exit_code:
            raise VerifyError(f"{build_dir}: outputs differ from onnxruntime beyond tolerance") from None
        raise


def tune(plan_file: str | Path, budget: str = "10m", db: str | Path = "tuning") -> None:
    """Tune the plan's CPU stages with MetaSchedule for `budget` (e.g. "10m"), recording into `db`."""
    from nndeploy.cli.tune import tune_command

    _run(tune_command, BuildError, Path(plan_file), budget, Path(db))


def serve(build_dir: str | Path, port: int = 8001, http_port: int = 8000, **options: Any) -> None:
    """Serve a build (Ray-supervised stage workers behind a KServe v2 gRPC + HTTP endpoint) until the
    process gets SIGINT/SIGTERM. `options`: the command's other options by name (metrics_port,
    max_batch, batch_delay_ms, tls_cert, ...)."""
    from nndeploy.cli.serve import serve_command

    serve_command(Path(build_dir), port=port, http_port=http_port, **options)


def deploy(build_dir: str | Path, output: str | Path | None = None, **options: Any) -> None:
    """Write (and check offline) Kubernetes manifests for a build into `output`. `options`: the
    command's other options by name (namespace, image, ray, tls_secret, ...)."""
    from nndeploy.cli.deploy import deploy_command

    _run(
        deploy_command,
        NNDeployError,
        Path(build_dir),
        Path(output) if output is not None else None,
        **options,
    )


def _run(command: Any, error: type[NNDeployError], *args: Any, **kwargs: Any) -> Any:
    """Call a command, turning a failing exit status into `error`."""
    try:
        return command(*args, **kwargs)
    except typer.Exit as exc:
        if exc.exit_code:
            raise error(
                f"{command.__name__.removesuffix('_command')} failed (exit {exc.exit_code})"
            ) from None
        return None
