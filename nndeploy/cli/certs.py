"""`nndeploy certs make`: a CA, server, client and per-stage certificates and a bearer token."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nndeploy.cli.common import out

certs_app = typer.Typer(no_args_is_help=True, help="Certificates and a token for TLS and client auth.")


def register(app: typer.Typer) -> None:
    """Add the `certs` commands to the main app."""
    app.add_typer(certs_app, name="certs")


@certs_app.command("make")
def make_command(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the files into.")],
    stages: Annotated[int, typer.Option("--stages", help="How many stage certificates (stage-0/ ...).")] = 4,
    hosts: Annotated[
        list[str] | None,
        typer.Option(
            "--host", help="DNS name or IP the certificates must cover (repeatable).", show_default=False
        ),
    ] = None,
    days: Annotated[int, typer.Option("--days", help="How long the certificates are valid.")] = 365,
    force: Annotated[bool, typer.Option("--force", help="Replace the files of an existing folder.")] = False,
) -> None:
    """Make a private CA and, signed by it, the endpoint's server certificate, a client certificate,
    one certificate per stage (for mutual TLS between stages) and a random bearer token."""
    from nndeploy.runtime.certs import DEFAULT_HOSTS, make_certificates

    written = make_certificates(out_dir, stages, hosts or (), days, force)
    names = ", ".join(dict.fromkeys([*DEFAULT_HOSTS, *(hosts or ())]))
    out.print(f"wrote {len(written)} files to {out_dir} (certificates valid {days} days for {names})")
    out.print(
        f"  serve:  nndeploy serve BUILD --tls-cert {out_dir}/server.crt --tls-key {out_dir}/server.key "
        f"--auth-token-file {out_dir}/token [--client-ca {out_dir}/ca.crt]",
        highlight=False,
    )
    out.print(
        f"  client: nndeploy infer HOST:PORT --tls-ca {out_dir}/ca.crt --token-file {out_dir}/token "
        f"[--tls-cert {out_dir}/client.crt --tls-key {out_dir}/client.key]",
        highlight=False,
    )
    out.print(
        f"  stages: nndeploy worker ... --tls-dir {out_dir}/stage-N, nndeploy endpoint ... --tls-dir "
        f"{out_dir}/endpoint",
        highlight=False,
    )
