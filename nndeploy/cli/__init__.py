"""The `nndeploy` command line: one thin command per verb, printing with rich; one module per verb group.

Each command parses its arguments, calls the verb's public function, and prints. Problems a user can fix
are NNDeployError: printed as one `error:` line with exit code 2 (`--debug` shows the traceback).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from nndeploy.cli import build, certs, check, deploy, plan, profile, serve
from nndeploy.cli.common import err
from nndeploy.errors import NNDeployError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Plan, compile, verify, serve and deploy one ONNX model over a heterogeneous cluster.",
)


def _print_version(wanted: bool) -> None:
    if wanted:
        from importlib.metadata import PackageNotFoundError, version

        from nndeploy import __version__

        parts = []
        for dist in ("apache-tvm", "onnxruntime", "onnx", "ray", "grpcio"):
            try:
                parts.append(f"{dist} {version(dist)}")
            except PackageNotFoundError:
                parts.append(f"{dist} not installed")
        typer.echo(f"nndeploy {__version__} ({', '.join(parts)})")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    wide: Annotated[bool, typer.Option("--wide", help="Never fold tables to fit the terminal.")] = False,
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Plan, compile, verify, serve and deploy one ONNX model over a heterogeneous cluster."""
    from nndeploy.cli.common import set_wide

    set_wide(wide)


for group in (plan, check, build, serve, deploy, profile, certs):
    group.register(app)


def main() -> None:
    """Console-script entry point: run the app, turning NNDeployError into `error: ...` and exit 2."""
    if "--debug" not in sys.argv:
        # gRPC's C core logs its own copy of errors we already report in one line.
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        app()
    except NNDeployError as exc:
        if "--debug" in sys.argv:
            raise
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
