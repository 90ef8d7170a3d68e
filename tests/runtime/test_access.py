"""Who may call the endpoint: `certs make`, TLS on the client port, client certificates, bearer tokens."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import grpc
import numpy as np
import pytest
from test_cli import assert_user_error, nndeploy

from nndeploy.proto import health_pb2, health_pb2_grpc
from nndeploy.runtime.access import AccessError, client_access, read_token, server_access
from nndeploy.runtime.chain import free_ports
from nndeploy.runtime.client import Client, ClientError, Metadata, run_bench
from nndeploy.runtime.endpoint import start_endpoint
from nndeploy.runtime.links import CHANNEL_OPTIONS
from nndeploy.runtime.served import ModelSpec
from nndeploy.runtime.worker import StageSpec, serve_stage
from nndeploy.types import TensorSpec


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    done = nndeploy("certs", "make", "-o", folder, "--stages", "2", "--host", "nndeploy.example")
    assert done.returncode == 0, done.stderr
    return folder


def test_certs_make_writes_a_ca_and_certificates_it_signed(certs: Path) -> None:
    from cryptography import x509

    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for leaf in ("server.crt", "client.crt", "endpoint/tls.crt", "stage-0/tls.crt", "stage-1/tls.crt"):
        cert = x509.load_pem_x509_certificate((certs / leaf).read_bytes())
        cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "nndeploy.example" in names.get_values_for_type(x509.DNSName)
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (certs / "stage-1" / "ca.crt").read_bytes() == (certs / "ca.crt").read_bytes()
    for secret in ("ca.key", "server.key", "client.key", "stage-0/tls.key", "token"):
        assert stat.S_IMODE((certs / secret).stat().st_mode) == 0o600, secret
    assert len(read_token(certs / "token")) >= 32


def test_certs_make_refuses_to_overwrite_and_bad_hosts(certs: Path, tmp_path: Path) -> None:
    assert_user_error(nndeploy("certs", "make", "-o", certs), "already holds a CA", "--force")
    assert_user_error(nndeploy("certs", "make", "-o", tmp_path, "--host", "bad name"), "--host 'bad name'")
    assert not (tmp_path / "ca.key").exists()


def test_bad_access_files_are_one_clear_error(certs: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "short").write_text("abc\n")
    (tmp_path / "notpem").write_text("hello\n")
    with pytest.raises(AccessError, match="empty"):
        read_token(tmp_path / "empty")
    with pytest.raises(AccessError, match="shorter than 16"):
        read_token(tmp_path / "short")
    with pytest.raises(AccessError, match="cannot read"):
        read_token(tmp_path / "missing")
    with pytest.raises(AccessError, match="go together"):
        server_access(certs / "server.crt", None, None, None)
    with pytest.raises(AccessError, match="needs --tls-cert"):
        server_access(None, None, certs / "ca.crt", None)
    with pytest.raises(AccessError, match="not a PEM"):
        client_access(tmp_path / "notpem", None, None, None)
    assert server_access(None, None, None, None) is None


def _secured_chain(certs: Path, client_ca: bool, scenario):  # type: ignore[no-untyped-def]
    """Two stages (x*2, then +1) behind an endpoint with TLS, a token and optionally client certificates;
    runs `scenario(port)` in a thread and returns what it returns."""
    access = server_access(
        certs / "server.crt", certs / "server.key", certs / "ca.crt" if client_ca else None, certs / "token"
    )
    port0, port1, client_port, sink_port = free_ports(4)
    stages = (("a", f"127.0.0.1:{port0}"), ("b", f"127.0.0.1:{port1}"))
    model = ModelSpec(
        "m", "1", (TensorSpec("x", (2, 3), "float32"),), (TensorSpec("y", (2, 3), "float32"),), stages
    )

    async def run():  # type: ignore[no-untyped-def]
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(
                serve_stage(
                    StageSpec(1, "b", ("h",), ("y",), None), lambda t: {"y": t["h"] + 1}, port1, stop=stop
                )
            ),
            asyncio.create_task(
                serve_stage(
                    StageSpec(0, "a", ("x",), ("h",), stages[1][1]),
                    lambda t: {"h": t["x"] * 2},
                    port0,
                    stop=stop,
                )
            ),
        ]
        server, endpoint, _ = await start_endpoint(model, client_port, sink_port=sink_port, access=access)
        try:
            for _ in range(100):
                if all(endpoint.stage_up) and all(endpoint.stats):
                    break
                await asyncio.sleep(0.1)
            return await asyncio.to_thread(scenario, f"localhost:{client_port}")
        finally:
            stop.set()
            await server.stop(grace=1.0)
            await asyncio.gather(*tasks)

    return asyncio.run(asyncio.wait_for(run(), 120))


def _code(call) -> str:  # type: ignore[no-untyped-def]
    try:
        call()
    except ClientError as exc:
        return str(exc)
    return "OK"


def test_tls_and_token_let_only_the_right_clients_in(certs: Path) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    token = read_token(certs / "token").decode()

    def scenario(target: str) -> dict[str, object]:
        good = client_access(certs / "ca.crt", None, None, certs / "token")
        seen: dict[str, object] = {}
        with Client(target, timeout_s=10, access=good) as client:
            seen["ok"] = client.infer("m", {"x": x})
            report = run_bench(target, Metadata("m", {"x": (x.dtype, x.shape)}), 4, 10_000, 10, good, 1.0)
            seen["bench"] = (report.ok, report.errors)
        wrong = good.__class__(ca=good.ca, token="x" * 43)
        with Client(target, timeout_s=10, access=wrong) as client:
            seen["wrong token"] = _code(lambda: client.infer("m", {"x": x}))
        with Client(target, timeout_s=10, access=good.__class__(ca=good.ca)) as client:
            seen["no token"] = _code(lambda: client.infer("m", {"x": x}))
        with Client(target, timeout_s=5) as client:  # plaintext to a TLS port
            seen["plaintext"] = _code(lambda: client.infer("m", {"x": x}))
        with good.channel(target, CHANNEL_OPTIONS) as channel:  # probes need no token
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            seen["health"] = check.status
        return seen

    seen = _secured_chain(certs, client_ca=False, scenario=scenario)
    assert np.array_equal(seen["ok"]["y"], x * 2 + 1)  # type: ignore[index]
    ok, errors = seen["bench"]  # type: ignore[misc]
    assert ok > 0 and errors == 0
    assert "UNAUTHENTICATED" in str(seen["wrong token"]) and "bearer token" in str(seen["wrong token"])
    assert "UNAUTHENTICATED" in str(seen["no token"])
    assert token not in str(seen["wrong token"]) + str(seen["no token"])
    assert "UNAVAILABLE" in str(seen["plaintext"])
    assert seen["health"] == health_pb2.HealthCheckResponse.SERVING


def test_client_certificates_are_required_with_a_client_ca(certs: Path) -> None:
    x = np.ones((2, 3), np.float32)

    def scenario(target: str) -> dict[str, str]:
        without = client_access(certs / "ca.crt", None, None, certs / "token")
        with_cert = client_access(
            certs / "ca.crt", certs / "client.crt", certs / "client.key", certs / "token"
        )
        seen = {}
        with Client(target, timeout_s=5, access=without) as client:
            seen["without"] = _code(lambda: client.infer("m", {"x": x}))
        with Client(target, timeout_s=10, access=with_cert) as client:
            seen["with"] = _code(lambda: client.infer("m", {"x": x}))
        return seen

    seen = _secured_chain(certs, client_ca=True, scenario=scenario)
    assert "UNAVAILABLE" in seen["without"]
    assert seen["with"] == "OK"


def test_grpc_status_of_a_missing_token_is_unauthenticated(certs: Path) -> None:
    """The raw status code, as any KServe v2 client (Triton's included) sees it."""

    def scenario(target: str) -> grpc.StatusCode:
        from nndeploy.proto import inference_pb2, inference_pb2_grpc

        access = client_access(certs / "ca.crt", None, None, None)
        with access.channel(target, CHANNEL_OPTIONS) as channel:
            try:
                inference_pb2_grpc.GRPCInferenceServiceStub(channel).ServerReady(
                    inference_pb2.ServerReadyRequest(), timeout=10
                )
            except grpc.RpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    assert _secured_chain(certs, client_ca=False, scenario=scenario) == grpc.StatusCode.UNAUTHENTICATED


def test_serve_and_bench_refuse_incomplete_security_options(certs: Path, tmp_path: Path) -> None:
    assert_user_error(nndeploy("serve", tmp_path, "--tls-cert", certs / "server.crt"), "--tls-key")
    assert_user_error(
        nndeploy(
            "infer", "127.0.0.1:1", "--tls-cert", certs / "client.crt", "--tls-key", certs / "client.key"
        ),
        "--tls-ca",
    )
    assert_user_error(nndeploy("bench", "127.0.0.1:1", "--duration", "soon"), "--duration 'soon'")
