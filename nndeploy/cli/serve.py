"""The serving half of the command line: serve, infer and bench."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from nndeploy.cli.common import err, out, read_build

# Options shared by the commands that run an endpoint (serve, endpoint) and by its clients (infer, bench).
ServerCert = Annotated[
    Path | None, typer.Option("--tls-cert", help="PEM certificate: clients connect over TLS.")
]
ServerKey = Annotated[Path | None, typer.Option("--tls-key", help="PEM private key of --tls-cert.")]
ClientCa = Annotated[
    Path | None, typer.Option("--client-ca", help="PEM CA: clients must present a certificate it signed.")
]
AuthTokenFile = Annotated[
    Path | None, typer.Option("--auth-token-file", help="File holding the bearer token clients must send.")
]
MaxInFlight = Annotated[
    int,
    typer.Option("--max-in-flight", min=1, help="Requests in flight at once; more get RESOURCE_EXHAUSTED."),
]
MaxRequestMb = Annotated[
    float,
    typer.Option(
        "--max-request-mb", min=0.001, help="Largest request in MiB; larger get RESOURCE_EXHAUSTED."
    ),
]
HttpPort = Annotated[
    int, typer.Option("--http-port", min=0, help="KServe v2 HTTP/REST port (0: any free port).")
]
NoHttp = Annotated[bool, typer.Option("--no-http", help="Serve gRPC only (no HTTP/REST port).")]
SidePort = typer.Option(
    "--side-port",
    min=0,
    help="Without TLS between stages: the port of the plain TCP connections that carry large tensors "
    "beside the gRPC stream (0: any free port; a firewall that closes it just means slower hops).",
)
MaxBatch = Annotated[
    int,
    typer.Option(
        "--max-batch",
        min=0,
        help="Dynamic batching: run requests arriving together as one batch of up to N samples, padded to "
        "a batch size the build has (compile --batch-sizes); 0: off.",
    ),
]
BatchDelayMs = Annotated[
    float,
    typer.Option(
        "--batch-delay-ms", min=0.0, help="With --max-batch: how long a request waits for batch-mates."
    ),
]
StageTlsDir = Annotated[
    Path | None,
    typer.Option(
        "--tls-dir",
        help="Folder with tls.crt, tls.key, ca.crt (or endpoint/ and stage-N/ folders of them, as "
        "nndeploy certs make writes): mutual TLS between the endpoint and the stages.",
    ),
]
TlsServerName = Annotated[
    str,
    typer.Option(
        "--tls-server-name",
        help="With --tls-dir: verify stage and endpoint servers against this DNS name, which every "
        "certificate carries, instead of the address dialled (serve's default: the endpoint "
        "certificate's first DNS name, as stages on Ray are dialled by IP).",
    ),
]
TlsCa = Annotated[
    Path | None, typer.Option("--tls-ca", help="PEM CA that signed the server's certificate: use TLS.")
]
ClientCert = Annotated[
    Path | None, typer.Option("--tls-cert", help="PEM client certificate, for servers that need one.")
]
TokenFile = Annotated[
    Path | None, typer.Option("--token-file", help="File holding the bearer token to send.")
]


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command("serve")(serve_command)
    app.command("infer")(infer_command)
    app.command("bench")(bench_command)
    app.command("worker")(worker_command)
    app.command("endpoint")(endpoint_command)


def serve_command(
    build_dir: Annotated[Path, typer.Argument(metavar="BUILD", help="Folder written by nndeploy compile.")],
    port: Annotated[int, typer.Option("--port", help="KServe v2 gRPC port.")] = 8001,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Prometheus /metrics port.")
    ] = 9001,
    address: Annotated[
        str | None, typer.Option("--address", help="Join this Ray cluster (default: local Ray).")
    ] = None,
    tls_cert: ServerCert = None,
    tls_key: ServerKey = None,
    client_ca: ClientCa = None,
    auth_token_file: AuthTokenFile = None,
    max_in_flight: MaxInFlight = 256,
    max_request_mb: MaxRequestMb = 1024.0,
    http_port: HttpPort = 8000,
    no_http: NoHttp = False,
    max_batch: MaxBatch = 0,
    batch_delay_ms: BatchDelayMs = 5.0,
    tls_dir: StageTlsDir = None,
    tls_server_name: TlsServerName = "",
) -> None:
    """Serve BUILD: one Ray-supervised gRPC worker per stage behind a KServe v2 endpoint, gRPC and
    HTTP/REST (Ctrl-C stops). With --address, a --tls-dir must hold the same files at the same path on
    every node (a Secret mounted in every Ray pod)."""
    from nndeploy.runtime.access import server_access
    from nndeploy.runtime.serve import Serving, serve_build

    access = server_access(tls_cert, tls_key, client_ca, auth_token_file)
    manifest, plan = read_build(build_dir)

    def ready(serving: Serving) -> None:
        table = Table(title=f"serving model '{serving.model.name}' (version {serving.model.version})")
        for column in ("stage", "device", "worker", "pid"):
            table.add_column(column)
        for index, ((device, address), pid) in enumerate(
            zip(serving.model.stages, serving.pids, strict=True)
        ):
            table.add_row(str(index), device, address, str(pid))
        out.print(table)
        secured = _security_words(access)
        out.print(f"KServe v2 gRPC endpoint listening on {serving.endpoint}{secured}", highlight=False)
        if serving.http:
            out.print(f"KServe v2 HTTP/REST endpoint listening on {serving.http}{secured}", highlight=False)
        if serving.model.max_batch:
            out.print(
                f"dynamic batching: up to {serving.model.max_batch} samples within "
                f"{serving.model.batch_delay_ms:g} ms, run at batch sizes {list(serving.model.batch_sizes)}",
                highlight=False,
            )
        if serving.metrics:
            out.print(f"Prometheus metrics on {serving.metrics}", highlight=False)
        out.print("press Ctrl-C to stop", highlight=False)

    from nndeploy.runtime.ray_cluster import HeadLost

    try:
        asyncio.run(
            serve_build(
                build_dir,
                plan,
                manifest,
                port,
                host,
                metrics_port,
                address,
                ready,
                access=access,
                max_in_flight=max_in_flight,
                max_request_bytes=int(max_request_mb * (1 << 20)),
                on_event=lambda message: err.print(f"[yellow]warning:[/] {message}", highlight=False),
                http_port=None if no_http else http_port,
                max_batch=max_batch,
                batch_delay_ms=batch_delay_ms,
                tls_dir=tls_dir,
                tls_server_name=tls_server_name,
            )
        )
    except HeadLost as exc:
        # Everything this process ran is stopped; Ray's exit handlers would wait a minute for the lost head
        # (and then end the process with status 1), so leave without them.
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2)
    out.print("stopped; all stage workers shut down")


def infer_command(
    target: Annotated[
        str, typer.Argument(metavar="HOST:PORT", help="A running nndeploy (or any KServe v2) endpoint.")
    ],
    inputs: Annotated[
        list[str] | None, typer.Option("--input", help="NAME=file.npy (repeatable); random if omitted.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Model name (default: the server's only model).")
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Save the outputs as .npz.")] = None,
    tls_ca: TlsCa = None,
    tls_cert: ClientCert = None,
    tls_key: ServerKey = None,
    token_file: TokenFile = None,
) -> None:
    """Send one request and print the outputs."""
    from nndeploy.runtime.access import client_access
    from nndeploy.runtime.client import Client

    with Client(target, access=client_access(tls_ca, tls_cert, tls_key, token_file)) as client:
        meta = client.metadata(model)
        arrays = client.inputs_from_files(meta, inputs or [])
        result = client.infer(meta.name, arrays)
    table = Table(title=f"{meta.name} @ {target}")
    for column in ("output", "dtype", "shape", "min", "max", "first values"):
        table.add_column(column)
    for name, array in result.items():
        flat = array.reshape(-1)
        table.add_row(
            name,
            str(array.dtype),
            str(list(array.shape)),
            f"{flat.min():.4g}",
            f"{flat.max():.4g}",
            ", ".join(f"{v:.4g}" for v in flat[:4]),
        )
    out.print(table)
    if output is not None:
        np.savez(output, **result)
        out.print(f"outputs saved to {output}")


def bench_command(
    target: Annotated[str, typer.Argument(metavar="HOST:PORT", help="A running nndeploy endpoint.")],
    concurrency: Annotated[int, typer.Option("--concurrency", min=1)] = 8,
    requests: Annotated[
        int | None,
        typer.Option("--requests", min=1, help="How many (default 200; no limit with --duration)."),
    ] = None,
    duration: Annotated[
        str | None, typer.Option("--duration", help="Stop after this long, e.g. 60s or 10m.")
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.001, help="Deadline of each request, in seconds.")
    ] = 60.0,
    model: Annotated[str | None, typer.Option("--model")] = None,
    metrics: Annotated[
        str | None,
        typer.Option("--metrics", help="The server's /metrics URL: per-stage figures of this run."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the figures as one JSON object (keys in the README).")
    ] = False,
    tls_ca: TlsCa = None,
    tls_cert: ClientCert = None,
    tls_key: ServerKey = None,
    token_file: TokenFile = None,
) -> None:
    """Drive the endpoint with concurrent requests; print throughput, p50/p99 latency and, with --metrics,
    per-stage figures of this run. Progress goes to stderr while it runs; exits 1 if any request failed."""
    import json

    from nndeploy.cli.tune import parse_duration
    from nndeploy.runtime.access import client_access
    from nndeploy.runtime.client import Client, run_bench, scrape_stages, stage_figures

    access = client_access(tls_ca, tls_cert, tls_key, token_file)
    duration_s = parse_duration(duration, "--duration") if duration is not None else None
    count = requests if requests is not None else (200 if duration_s is None else 1 << 62)
    with Client(target, access=access) as client:
        meta = client.metadata(model)
    before = scrape_stages(metrics) if metrics else {}
    total = "" if requests is None and duration_s is not None else f"/{count}"

    def progress(ok: int, failed: int, seconds: float) -> None:
        err.print(
            f"  {seconds:5.0f} s: {ok + failed}{total} done, {ok} ok, {failed} failed, "
            f"{ok / seconds if seconds else 0:.1f} req/s",
            highlight=False,
        )

    report = run_bench(
        target, meta, concurrency, count, timeout, access=access, duration_s=duration_s, progress=progress
    )
    stages = stage_figures(before, scrape_stages(metrics)) if metrics else []
    if as_json:
        figures = {
            "target": target,
            "model": meta.name,
            "concurrency": concurrency,
            "requests": report.ok + report.errors,
            "ok": report.ok,
            "failed": report.errors,
            "error_codes": dict(sorted(report.error_codes.items())),
            "seconds": round(report.seconds, 3),
            "throughput_per_s": round(report.throughput, 3),
            "latency_ms": _latency_figures(report.latencies_ms),
            "stages": stages,
        }
        typer.echo(json.dumps(figures, indent=1))
    else:
        failures = ", ".join(f"{code} x{n}" for code, n in sorted(report.error_codes.items()))
        out.print(
            f"{report.ok}/{report.ok + report.errors} ok, {report.errors} failed"
            f"{f' ({failures})' if failures else ''}; "
            f"{report.throughput:.1f} req/s; latency p50 "
            f"{report.p50_ms:.2f} ms, p99 {report.p99_ms:.2f} ms (concurrency {concurrency})",
            highlight=False,
        )
        if metrics:
            table = Table(title="per stage, this run")
            for column in ("stage", "device", "requests", "errors", "compute ms/req", "transfer ms/req"):
                table.add_column(column)
            for row in stages:
                per = [row["compute_ms_per_request"], row["transfer_ms_per_request"]]
                cells = [f"{v:.3f}" if v is not None else "-" for v in per]
                table.add_row(
                    str(row["stage"]), row["device"], str(row["requests"]), str(row["errors"]), *cells
                )
            out.print(table)
    if report.errors:
        raise typer.Exit(1)


def _latency_figures(latencies_ms: list[float]) -> dict[str, float | None]:
    """p50, p90, p99, mean and max of the successful requests' latencies (None without any)."""
    import numpy as np

    if not latencies_ms:
        return dict.fromkeys(("p50", "p90", "p99", "mean", "max"))
    values = np.asarray(latencies_ms)
    figures = {f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 99)}
    figures.update(mean=float(values.mean()), max=float(values.max()))
    return {name: round(value, 3) for name, value in figures.items()}


def worker_command(
    build_dir: Annotated[Path, typer.Argument(metavar="BUILD", help="Folder written by nndeploy compile.")],
    stage: Annotated[int, typer.Option("--stage", min=0, help="Which stage this process serves.")],
    port: Annotated[int, typer.Option("--port", help="gRPC port (StageWorker + grpc.health.v1).")] = 50051,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    downstream: Annotated[
        str | None, typer.Option("--downstream", help="host:port of the next stage (omit for the last).")
    ] = None,
    tls_dir: Annotated[
        Path | None,
        typer.Option("--tls-dir", help="Folder with tls.crt, tls.key, ca.crt: mutual TLS between stages."),
    ] = None,
    tls_server_name: TlsServerName = "",
    side_port: Annotated[int, SidePort] = 0,
) -> None:
    """Run one stage worker without Ray (what each Kubernetes stage pod runs); SIGTERM stops it."""
    from nndeploy.runtime.serve import serve_one_stage

    manifest, plan = read_build(build_dir)
    out.print(f"stage {stage} worker on {host}:{port} -> {downstream or 'endpoint'}", highlight=False)
    from nndeploy.runtime.tls import load_tls

    tls = load_tls(tls_dir, tls_server_name)
    asyncio.run(
        serve_one_stage(
            build_dir, plan, manifest, stage, port, host, downstream, tls=tls, side_port=side_port
        )
    )


def endpoint_command(
    build_dir: Annotated[Path, typer.Argument(metavar="BUILD", help="Folder written by nndeploy compile.")],
    stages: Annotated[list[str], typer.Option("--stage", help="host:port of each stage worker, in order.")],
    port: Annotated[int, typer.Option("--port", help="KServe v2 gRPC port.")] = 8001,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    advertise: Annotated[
        str | None, typer.Option("--advertise", help="host:port the last stage reaches this endpoint at.")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Prometheus /metrics port.")
    ] = 9001,
    tls_dir: Annotated[
        Path | None, typer.Option("--tls-dir", help="tls.crt, tls.key, ca.crt: mutual TLS with the stages.")
    ] = None,
    tls_server_name: TlsServerName = "",
    sink_port: Annotated[
        int | None,
        typer.Option("--sink-port", help="With --tls-dir or --tls-cert: the port stages deliver results to."),
    ] = None,
    tls_cert: ServerCert = None,
    tls_key: ServerKey = None,
    client_ca: ClientCa = None,
    auth_token_file: AuthTokenFile = None,
    max_in_flight: MaxInFlight = 256,
    max_request_mb: MaxRequestMb = 1024.0,
    http_port: HttpPort = 8000,
    no_http: NoHttp = False,
    max_batch: MaxBatch = 0,
    batch_delay_ms: BatchDelayMs = 5.0,
    side_port: Annotated[int, SidePort] = 0,
) -> None:
    """Run the KServe v2 endpoint (gRPC and HTTP/REST) in front of stage workers started elsewhere
    (Kubernetes)."""
    from nndeploy.runtime.access import server_access
    from nndeploy.runtime.serve import serve_endpoint

    access = server_access(tls_cert, tls_key, client_ca, auth_token_file)
    manifest, plan = read_build(build_dir)
    http = "" if no_http else f", HTTP/REST on {host}:{http_port}"
    out.print(f"endpoint on {host}:{port}{http} in front of {', '.join(stages)}", highlight=False)
    from nndeploy.runtime.tls import load_tls

    tls = load_tls(tls_dir, tls_server_name)
    asyncio.run(
        serve_endpoint(
            plan,
            stages,
            port,
            host,
            advertise,
            metrics_port,
            tls=tls,
            sink_port=sink_port,
            access=access,
            max_in_flight=max_in_flight,
            max_request_bytes=int(max_request_mb * (1 << 20)),
            http_port=None if no_http else http_port,
            build=(build_dir, manifest),
            max_batch=max_batch,
            batch_delay_ms=batch_delay_ms,
            side_port=side_port,
        )
    )


def _security_words(access: object) -> str:
    """' (TLS, client certificates, bearer token)' as far as `access` turns them on."""
    if access is None:
        return " (plaintext, no token)"
    words = ["TLS"] if getattr(access, "cert", None) else ["plaintext"]
    if getattr(access, "client_ca", None):
        words.append("client certificates required")
    if getattr(access, "token", None):
        words.append("bearer token required")
    return f" ({', '.join(words)})"
