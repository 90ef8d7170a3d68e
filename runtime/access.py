"""Who may call the endpoint: TLS on its client port (optionally requiring client certificates) and an
optional bearer token, for the server; the matching credentials, for clients.

The token is compared in constant time and never written to a log or an error message. Only the KServe
v2 inference service needs the token: grpc.health.v1 stays open for load balancers and kubelet probes,
and the stages' result sink is guarded by mutual TLS between stages (`--tls-dir`) on its own port.
"""

from __future__ import annotations

import hmac
import ssl
import stat
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from nndeploy.errors import NNDeployError

GUARDED_SERVICE = "/inference.GRPCInferenceService/"


class AccessError(NNDeployError):
    """A certificate, key or token file cannot be used."""


@dataclass(frozen=True)
class ServerAccess:
    """The endpoint's client-facing security: its certificate and key (TLS), the CA whose client
    certificates it requires (mutual TLS), and the bearer token clients must send."""

    cert: bytes | None = None
    key: bytes | None = None
    client_ca: bytes | None = None
    token: bytes | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        """Whether the client port speaks TLS."""
        return self.cert is not None

    def credentials(self) -> grpc.ServerCredentials | None:
        """Server credentials for the client port (None: plaintext)."""
        if self.cert is None or self.key is None:
            return None
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """The HTTP port's TLS context (None: plaintext): the same certificate, key and client CA."""
        if self.cert is None or self.key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        # load_cert_chain reads files only: write the PEMs to a private temporary folder for the call.
        with tempfile.TemporaryDirectory() as folder:
            cert, key = Path(folder, "tls.crt"), Path(folder, "tls.key")
            cert.write_bytes(self.cert)
            key.touch(mode=0o600)
            key.write_bytes(self.key)
            context.load_cert_chain(cert, key)
        if self.client_ca is not None:
            context.load_verify_locations(cadata=self.client_ca.decode())
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """The token check, when a token is set."""
        return [TokenCheck(self.token)] if self.token else []


@dataclass(frozen=True)
class ClientAccess:
    """What a client presents: the CA that signed the server's certificate (TLS), its own certificate
    and key (for servers that require one), and the bearer token."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    token: str | None = field(default=None, repr=False)

    def channel(self, target: str, options: list[tuple[str, Any]], aio: bool = False) -> Any:
        """A (sync or asyncio) gRPC channel to `target`: TLS when a CA is given, else plaintext."""
        module = grpc.aio if aio else grpc
        if self.ca is None:
            return module.insecure_channel(target, options=options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )
        return module.secure_channel(target, credentials, options=options)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the token, if any."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


class TokenCheck(grpc.aio.ServerInterceptor):
    """Refuses KServe v2 calls without `authorization: Bearer <token>` with UNAUTHENTICATED."""

    def __init__(self, token: bytes) -> None:
        self._expected = b"Bearer " + token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Pass authorised calls on; answer the others UNAUTHENTICATED without running them."""
        if not handler_call_details.method.startswith(GUARDED_SERVICE):
            return await continuation(handler_call_details)
        sent = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        given = sent.encode() if isinstance(sent, str) else bytes(sent)
        if hmac.compare_digest(given, self._expected):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        message = "a valid bearer token is required (authorization: Bearer <token>)"
        if handler is None:
            return None  # type: ignore[return-value]

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            yield  # pragma: no cover - abort raises

        deserializer, serializer = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(refuse, deserializer, serializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(refuse_stream, deserializer, serializer)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(refuse, deserializer, serializer)
        return grpc.stream_stream_rpc_method_handler(refuse_stream, deserializer, serializer)


def read_token(path: Path) -> bytes:
    """The token in `path` (surrounding whitespace removed); one-line errors that never show it."""
    data = _read(path, "token file")
    token = data.strip()
    if not token:
        raise AccessError(f"{path}: the token file is empty; put one token in it (nndeploy certs make)")
    if len(token) < 16:
        raise AccessError(f"{path}: the token is shorter than 16 characters; use a random one")
    if any(byte < 0x21 or byte > 0x7E for byte in token):
        raise AccessError(f"{path}: the token must be printable ASCII without spaces (one line)")
    if Path(path).stat().st_mode & stat.S_IRWXO:
        import sys

        print(f"warning: {path} is readable by every user of this machine; chmod 600 it", file=sys.stderr)
    return token


def server_access(
    cert: Path | None, key: Path | None, client_ca: Path | None, token_file: Path | None
) -> ServerAccess | None:
    """The endpoint's client-facing security from the files named on the command line (None: none)."""
    if (cert is None) != (key is None):
        raise AccessError("--tls-cert and --tls-key go together: pass both (or neither)")
    if client_ca is not None and cert is None:
        raise AccessError("--client-ca needs --tls-cert and --tls-key: client certificates need TLS")
    if cert is None and token_file is None:
        return None
    return ServerAccess(
        cert=_pem(cert, "certificate") if cert else None,
        key=_pem(key, "private key") if key else None,
        client_ca=_pem(client_ca, "CA certificate") if client_ca else None,
        token=read_token(token_file) if token_file else None,
    )


def client_access(
    ca: Path | None, cert: Path | None, key: Path | None, token_file: Path | None
) -> ClientAccess:
    """A client's credentials from the files named on the command line."""
    if (cert is None) != (key is None):
        raise AccessError("--tls-cert and --tls-key go together: pass both (or neither)")
    if cert is not None and ca is None:
        raise AccessError("--tls-cert needs --tls-ca (the CA that signed the server's certificate)")
    return ClientAccess(
        ca=_pem(ca, "CA certificate") if ca else None,
        cert=_pem(cert, "certificate") if cert else None,
        key=_pem(key, "private key") if key else None,
        token=read_token(token_file).decode() if token_file else None,
    )


def _pem(path: Path, what: str) -> bytes:
    data = _read(path, what)
    if b"-----BEGIN " not in data:
        raise AccessError(f"{path}: not a PEM {what} (expected a -----BEGIN ...----- block)")
    return data


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise AccessError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
