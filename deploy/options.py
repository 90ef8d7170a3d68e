"""What `nndeploy deploy` is asked for: namespace, image, names and ports shared by every manifest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nndeploy.errors import NNDeployError

WORKER_PORT = 50051
ENDPOINT_PORT = 8001
METRICS_PORT = 9001
SINK_PORT = 8002  # with TLS: where stages deliver results to the endpoint, over mutual TLS
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
    `token_secret` a Secret whose key `token` clients must send as a bearer token."""

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
