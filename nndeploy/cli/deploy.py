"""The deploy half of the command line: `nndeploy deploy` writes and checks Kubernetes manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nndeploy.cli.common import out


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command("deploy")(deploy_command)


def deploy_command(
    build_dir: Annotated[
        Path,
        typer.Argument(
            metavar="BUILD",
            help="Folder written by nndeploy compile (with --check alone: a manifests folder).",
        ),
    ],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder for the manifests.")] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Prefix of every object (default: the model's file name).")
    ] = None,
    namespace: Annotated[str, typer.Option("--namespace", help="Kubernetes namespace.")] = "default",
    image: Annotated[
        str,
        typer.Option("--image", help="Runtime image; -amd64 / -arm64 / -cuda is appended per stage."),
    ] = "ghcr.io/nndeploy/nndeploy-runtime:0.1.0",
    multiarch: Annotated[
        bool, typer.Option("--multiarch", help="The image is a multi-arch manifest list: no suffixes.")
    ] = False,
    pvc: Annotated[
        str, typer.Option("--pvc", help="PersistentVolumeClaim that holds the build folder.")
    ] = "nndeploy-build",
    storage: Annotated[str, typer.Option("--storage", help="Size of that claim.")] = "2Gi",
    tls_secret: Annotated[
        str | None, typer.Option("--tls-secret", help="Secret with tls.crt, tls.key, ca.crt: mutual TLS.")
    ] = None,
    endpoint_tls_secret: Annotated[
        str | None,
        typer.Option(
            "--endpoint-tls-secret", help="TLS Secret (tls.crt, tls.key) for the endpoint's clients."
        ),
    ] = None,
    client_certs: Annotated[
        bool,
        typer.Option("--client-certs", help="Clients need a certificate signed by that Secret's ca.crt."),
    ] = False,
    token_secret: Annotated[
        str | None, typer.Option("--token-secret", help="Secret whose key 'token' clients must send.")
    ] = None,
    kubernetes_version: Annotated[
        str, typer.Option("--kubernetes-version", help="API version the manifests are checked against.")
    ] = "1.33.0",
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Write a KubeRay RayCluster instead: it replaces the plain manifests' per-stage "
            "Deployments, Services and NetworkPolicies (Ray places and restarts the stage workers).",
        ),
    ] = False,
    service_monitor: Annotated[
        bool,
        typer.Option(
            "--service-monitor",
            help="Also write a prometheus-operator ServiceMonitor for the endpoint's /metrics "
            "(the endpoint's pod carries prometheus.io scrape annotations either way).",
        ),
    ] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Validate the folder offline (after writing it, with -o).")
    ] = False,
) -> list[Path]:
    """Write Kubernetes manifests for BUILD into a folder for `kubectl apply -k`; --check validates one."""
    from nndeploy.deploy.folder import deploy_build
    from nndeploy.deploy.manifests import DeployError, default_name
    from nndeploy.deploy.options import DeployOptions

    if output is None:
        if not check:
            raise DeployError("give the output folder with -o k8s/ (or --check FOLDER to validate one)")
        return check_folder(build_dir, kubernetes_version)
    options = DeployOptions(
        name=name if name is not None else default_name(build_dir),
        namespace=namespace,
        image=image,
        multiarch=multiarch,
        artifacts_pvc=pvc,
        storage_size=storage,
        tls_secret=tls_secret,
        kubernetes_version=kubernetes_version,
        endpoint_tls_secret=endpoint_tls_secret,
        client_certs=client_certs,
        token_secret=token_secret,
        service_monitor=service_monitor,
    )
    files, paths = deploy_build(build_dir, output, options, ray=ray)
    objects = sum(len(docs) for docs in files.values())
    out.print(
        f"{objects} objects in {len(files)} files written to {output} "
        f"(apply with: kubectl apply -k {output}; fill the volume first, see {output / 'README.md'})",
        highlight=False,
    )
    if check:
        check_folder(output, kubernetes_version)
    return paths


def check_folder(folder: Path, kubernetes_version: str) -> list[Path]:
    """Validate every file of a manifests folder; one line per file, then one per problem."""
    from nndeploy.deploy.manifests import DeployError
    from nndeploy.deploy.validate import check_folder as validate_folder

    per_file, folder_errors = validate_folder(folder, kubernetes_version)
    problems = list(folder_errors)
    for file, errors in per_file.items():
        out.print(f"{'ok  ' if not errors else 'FAIL'} {folder / file}", highlight=False)
        problems += errors
    for line in problems:
        out.print(f"  {line}", highlight=False, soft_wrap=True)
    if problems:
        raise DeployError(
            f"{folder}: {len(problems)} problem(s) for Kubernetes {kubernetes_version}; first: {problems[0]}"
        )
    out.print(f"{folder}: every object is valid for Kubernetes {kubernetes_version}", highlight=False)
    return [folder / file for file in per_file]
