"""What `nndeploy deploy` is asked for: namespace, image, names and ports shared by every manifest."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from nndeploy.errors import NNDeployError

WORKER_PORT = 50051
ENDPOINT_PORT = 8001
HTTP_PORT = 8000  # the endpoint's KServe v2 HTTP/REST port
METRICS_PORT = 9001
SINK_PORT = 8002  # with TLS: where stages deliver results to the endpoint, over mutual TLS
# Without TLS between stages: the plain TCP side connections that carry large tensors beside the gRPC
# streams (runtime/bulk.py), into a worker and into the endpoint's result sink.
WORKER_SIDE_PORT = 50052
SIDE_PORT = 8003
TLS_MOUNT = "/etc/nndeploy-tls"
ENDPOINT_TLS_MOUNT = "/etc/nndeploy-endpoint-tls"  # the endpoint's client-facing certificate
TOKEN_MOUNT = "/etc/nndeploy-token"  # the bearer token clients must send
BUILD_MOUNT = "/build"
CONFIG_MOUNT = "/etc/nndeploy"  # the plan ConfigMap (plan.json, manifest.json, checksums)


@dataclass(frozen=True)
class DeployOptions:
    """Choices for the emitted manifests.

    `name` prefixes every object (a DNS-1123 label, e.g. the model name); `image` is the runtime image
    (an architecture suffix -amd64 / -arm64 / -cuda is appended per stage unless `multiarch` is set);
    `artifacts_pvc` is the PersistentVolumeClaim holding the build folder; `tls_secret`, when set, names
    a Secret with tls.crt/tls.key/ca.crt used between stages; `endpoint_tls_secret` a TLS Secret for the
    endpoint's client port (with `client_certs`, its ca.crt must have signed every client's certificate);
    `token_secret` a Secret whose key `token` clients must send as a bearer token; `service_monitor` adds a
    prometheus-operator ServiceMonitor for the endpoint's metrics."""

    name: str
    namespace: str = "default"
    image: str = "ghcr.io/nndeploy/nndeploy-runtime:0.1.0"
    multiarch: bool = False
    artifacts_pvc: str = "nndeploy-build"
    storage_size: str = "2Gi"
    tls_secret: str | None = None
    kubernetes_version: str = "1.33.0"
    endpoint_tls_secret: str | None = None
    client_certs: bool = False
    token_secret: str | None = None
    service_monitor: bool = False


DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Longest object name: "<name>-stage-NNN" / "<name>-endpoint" must stay a 63-character label (Services).
MAX_NAME = 40
ARCH_SUFFIX = {"x86_64": "amd64", "aarch64": "arm64"}


def image_variant(device: dict[str, Any]) -> str:
    """Which runtime image a device runs: 'cuda' for a GPU ('cuda-arm64' when its host is aarch64, as on a
    Jetson), else 'amd64' or 'arm64' from its arch."""
    if device.get("kind") == "gpu":
        host = (device.get("tvm_target") or {}).get("host") or {}
        return "cuda-arm64" if "aarch64" in str(host.get("mtriple", "")) else "cuda"
    arch = device.get("arch", "x86_64")
    if arch not in ARCH_SUFFIX:
        raise NNDeployError(f"device '{device['name']}': no runtime image for arch '{arch}'")
    return ARCH_SUFFIX[arch]


def image_for(options: DeployOptions, variant: str) -> str:
    """options.image with '-<variant>' appended to its tag (or to its name when it has no tag)."""
    if options.multiarch:
        return options.image
    slash = options.image.rfind("/")
    name, colon, tag = options.image[slash + 1 :].partition(":")
    prefix = options.image[: slash + 1]
    return f"{prefix}{name}:{tag}-{variant}" if colon else f"{prefix}{name}-{variant}"


class DeployError(NNDeployError):
    """The build cannot be deployed (no manifest, a failed stage, a bad name) or manifests are invalid."""


def check_label(value: str, what: str, max_len: int = 63) -> None:
    """Raise DeployError unless `value` is a DNS-1123 label of at most `max_len` characters."""
    if not DNS_1123_LABEL.match(value) or len(value) > max_len:
        raise DeployError(
            f"{what} '{value}' is not a DNS-1123 label (lowercase letters, digits and '-', starting and "
            f"ending with a letter or digit, at most {max_len} characters)"
        )


def check_options(options: DeployOptions) -> None:
    """One-line DeployError for names Kubernetes would refuse, and for what is not supported."""
    check_label(options.name, "--name", MAX_NAME)
    check_label(options.namespace, "--namespace")
    check_label(options.artifacts_pvc, "--pvc")
    for value, flag in (
        (options.tls_secret, "--tls-secret"),
        (options.endpoint_tls_secret, "--endpoint-tls-secret"),
        (options.token_secret, "--token-secret"),
    ):
        if value is not None:
            check_label(value, flag, 253)
    if options.client_certs and not options.endpoint_tls_secret:
        raise DeployError("--client-certs needs --endpoint-tls-secret (client certificates need TLS)")
