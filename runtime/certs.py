"""`nndeploy certs make`: a private CA and the certificates one deployment needs, for tests and first
setups (production clusters usually issue their own, e.g. with cert-manager).

Written into one folder:
- ca.crt, ca.key                    the CA (keep ca.key offline once the certificates are made)
- server.crt, server.key            the endpoint's client-facing certificate (`serve --tls-cert/--tls-key`)
- client.crt, client.key            a client certificate, for endpoints started with `--client-ca ca.crt`
- endpoint/, stage-N/               tls.crt, tls.key, ca.crt per process, the layout `--tls-dir` and a
                                    Kubernetes TLS Secret use, for mutual TLS between the stages
- token                             a random bearer token (`serve --auth-token-file`, `infer --token-file`)
Keys are ECDSA P-256; private keys and the token are written readable by the owner only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from nndeploy.errors import NNDeployError

DEFAULT_HOSTS = ("localhost", "127.0.0.1")


class CertsError(NNDeployError):
    """The certificate folder cannot be written as asked."""


def make_certificates(
    out_dir: Path, stages: int, hosts: Sequence[str] = (), days: int = 365, force: bool = False
) -> list[Path]:
    """Write a CA, server, client and per-stage certificates and a bearer token into `out_dir`;
    every certificate names `hosts` (plus localhost and 127.0.0.1). Returns the files written."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    if stages < 1:
        raise CertsError(f"--stages must be at least 1 (got {stages})")
    if days < 1:
        raise CertsError(f"--days must be at least 1 (got {days})")
    out_dir = Path(out_dir)
    if (out_dir / "ca.key").exists() and not force:
        raise CertsError(f"{out_dir} already holds a CA (ca.key); pass --force to replace every file in it")
    names = list(dict.fromkeys([*DEFAULT_HOSTS, *hosts]))
    for name in names:
        _san(name)  # refuse a bad name before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "nndeploy CA")])
    ca_cert = _certificate(ca_name, ca_key.public_key(), ca_name, ca_key, days, names=None)
    written = [_write_cert(out_dir / "ca.crt", ca_cert), _write_key(out_dir / "ca.key", ca_key)]
    identities = [("server", "nndeploy-endpoint"), ("client", "nndeploy-client")]
    identities += [("endpoint/tls", "nndeploy-endpoint")]
    identities += [(f"stage-{i}/tls", f"nndeploy-stage-{i}") for i in range(stages)]
    for stem, common_name in identities:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, common_name)])
        cert = _certificate(subject, key.public_key(), ca_name, ca_key, days, names=names)
        path = out_dir / stem
        path.parent.mkdir(parents=True, exist_ok=True)
        written += [_write_cert(path.with_suffix(".crt"), cert), _write_key(path.with_suffix(".key"), key)]
        if path.parent != out_dir:
            written.append(_write_cert(path.parent / "ca.crt", ca_cert))
    token = out_dir / "token"
    _write_private(token, (secrets.token_urlsafe(32) + "\n").encode())
    written.append(token)
    return written


def _certificate(subject, public_key, issuer, issuer_key, days: int, names: list[str] | None):  # type: ignore[no-untyped-def]
    """A certificate signed by `issuer_key`: a CA when `names` is None, else a leaf for those names,
    usable by servers and clients alike (gRPC peers are both)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=names is None, path_length=None), critical=True)
    )
    if names is None:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(name) for name in names]), critical=False
        ).add_extension(
            x509.ExtendedKeyUsage(
                [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _san(name: str):  # type: ignore[no-untyped-def]
    """An IP address or DNS name entry for the subject alternative names."""
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    label = name.rstrip(".")
    if not label or any(not part or len(part) > 63 for part in label.split(".")) or " " in label:
        raise CertsError(f"--host '{name}' is neither an IP address nor a DNS name")
    return x509.DNSName(label)


def _write_cert(path: Path, cert) -> Path:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key) -> Path:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(path, pem)
    return path


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` readable and writable by the owner only (also when replacing a file)."""
    if path.exists():
        path.unlink()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
