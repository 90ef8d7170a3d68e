"""Mutual TLS between stages: every worker and the endpoint's result sink present a certificate signed by
one CA and accept only peers that do the same. The files are those of a Kubernetes TLS Secret with a CA
(tls.crt, tls.key, ca.crt); the certificate's SANs must cover the addresses peers dial.

With one certificate per process (`nndeploy certs make`: common names nndeploy-endpoint and
nndeploy-stage-N), each process also checks who the peer is: a stage takes requests only from its
upstream (the endpoint for stage 0), its counters only from the endpoint, and the endpoint takes results
only from the last stage. A certificate shared by every process (one Secret) cannot tell them apart, so
then any peer the CA signed is accepted.

Where peers are dialled at addresses no certificate can name in advance (Ray actors, pods by IP), a process
verifies each server against one DNS name every certificate carries (`server_name`, gRPC's target name
override) instead of the address it dialled; the CA signature and the identity checks above stay."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import grpc

from nndeploy.errors import NNDeployError

FILES = ("tls.crt", "tls.key", "ca.crt")
ENDPOINT_IDENTITY = "nndeploy-endpoint"
PER_PROCESS_IDENTITY = re.compile(r"^nndeploy-(endpoint|stage-\d+)$")


def stage_identity(index: int) -> str:
    """The common name of stage `index`'s own certificate."""
    return f"nndeploy-stage-{index}"


@dataclass(frozen=True)
class TlsFiles:
    """PEM bytes of this process's certificate and key, and of the CA that signs every peer."""

    cert: bytes
    key: bytes
    ca: bytes
    server_name: str = ""  # the name servers are verified against ('': the address dialled)

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials for a server that requires client certificates signed by the CA."""
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    @cached_property
    def dns_names(self) -> tuple[str, ...]:
        """The DNS names among this certificate's subject alternative names."""
        from cryptography import x509

        try:
            cert = x509.load_pem_x509_certificate(self.cert)
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (ValueError, x509.ExtensionNotFound):
            return ()
        return tuple(names.get_values_for_type(x509.DNSName))

    def channel_options(self) -> tuple[tuple[str, str], ...]:
        """gRPC channel options verifying servers against `server_name` (none when it is unset)."""
        return (("grpc.ssl_target_name_override", self.server_name),) if self.server_name else ()

    @cached_property
    def identity(self) -> str:
        """The common name of this process's certificate ('' if it has none)."""
        from cryptography import x509

        try:
            names = x509.load_pem_x509_certificate(self.cert).subject.get_attributes_for_oid(
                x509.oid.NameOID.COMMON_NAME
            )
        except ValueError:
            return ""
        return str(names[0].value) if names else ""

    def peer_refused(self, context: Any, expected: str) -> str | None:
        """None if the peer of `context` may make this call, else why not. Enforced only when this
        process holds a per-process certificate; a shared one cannot tell peers apart."""
        if not PER_PROCESS_IDENTITY.match(self.identity):
            return None
        names = context.auth_context().get("x509_common_name") or [b""]
        peer = names[0].decode(errors="replace")
        if peer == expected:
            return None
        return f"{self.identity} accepts this call only from {expected}, not from '{peer or 'unknown'}'"

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials for a channel that verifies the server against the CA and presents our certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def load_tls(folder: str | Path | None, server_name: str = "") -> TlsFiles | None:
    """The TLS files in `folder` (None: plaintext); a one-line error naming a missing file."""
    if folder is None:
        return None
    base = Path(folder)
    missing = [name for name in FILES if not (base / name).is_file()]
    if missing:
        raise NNDeployError(
            f"{base}: missing {', '.join(missing)} (a TLS Secret with tls.crt, tls.key and ca.crt)"
        )
    cert, key, ca = ((base / name).read_bytes() for name in FILES)
    return TlsFiles(cert=cert, key=key, ca=ca, server_name=server_name)


def load_process_tls(folder: str | Path, role: str, server_name: str = "") -> TlsFiles:
    """One process's TLS files for `role` ('endpoint' or 'stage-N'): `folder`/`role` when it exists (the
    layout of `nndeploy certs make`, a certificate per process), else `folder` itself (one certificate
    shared by every process)."""
    own = Path(folder) / role
    tls = load_tls(own if own.is_dir() else folder, server_name)
    assert tls is not None
    return tls


def shared_server_name(tls: TlsFiles, folder: str | Path) -> str:
    """The name peers dialled by address are verified against: the first DNS name of `tls`'s certificate;
    a one-line error when it has none."""
    if not tls.dns_names:
        raise NNDeployError(
            f"{folder}: the certificate names no DNS name; stages dialled by IP address are verified against "
            "one DNS name every certificate of the deployment carries: add one (nndeploy certs make --host "
            "NAME) or pass --tls-server-name"
        )
    return tls.dns_names[0]
