"""Mutual TLS between stages: every worker and the endpoint's result sink present a certificate signed by
one CA and accept only peers that do the same. The files are those of a Kubernetes TLS Secret with a CA
(tls.crt, tls.key, ca.crt); the certificate's SANs must cover the addresses peers dial."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from nndeploy.errors import NNDeployError

FILES = ("tls.crt", "tls.key", "ca.crt")


@dataclass(frozen=True)
class TlsFiles:
    """PEM bytes of this process's certificate and key, and of the CA that signs every peer."""

    cert: bytes
    key: bytes
    ca: bytes

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials for a server that requires client certificates signed by the CA."""
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials for a channel that verifies the server against the CA and presents our certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def load_tls(folder: str | Path | None) -> TlsFiles | None:
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
    return TlsFiles(cert=cert, key=key, ca=ca)
