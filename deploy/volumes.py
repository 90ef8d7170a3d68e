"""The volumes and mounts of the emitted pods: the build folder's PVC and the plan ConfigMap (read-only),
the Secrets that carry certificates and the token (read-only, mode 0440), and /tmp on an emptyDir; and the
init container that checks the mounted build against the ConfigMap's checksums."""

from __future__ import annotations

from typing import Any

from nndeploy.deploy.options import (
    BUILD_MOUNT,
    CONFIG_MOUNT,
    ENDPOINT_TLS_MOUNT,
    TLS_MOUNT,
    TOKEN_MOUNT,
    DeployOptions,
)
from nndeploy.deploy.security import SCRATCH, container_security, scratch_volume

SECRET_MODE = 0o440  # readable by the pod's fsGroup (the runtime user), by nobody else


def pod_volumes(options: DeployOptions) -> list[dict[str, Any]]:
    """Every pod's volumes: the build PVC (read-only), the plan ConfigMap, the stage TLS Secret when asked
    for, and the /tmp emptyDir."""
    volumes = [
        {"name": "build", "persistentVolumeClaim": {"claimName": options.artifacts_pvc, "readOnly": True}},
        {"name": "config", "configMap": {"name": f"{options.name}-plan"}},
    ]
    if options.tls_secret is not None:
        volumes.append(
            {"name": "tls", "secret": {"secretName": options.tls_secret, "defaultMode": SECRET_MODE}}
        )
    return [*volumes, scratch_volume()]


def tls_mounts(options: DeployOptions) -> list[dict[str, Any]]:
    """The TLS Secret (tls.crt, tls.key, ca.crt) in the worker and endpoint containers, when asked for."""
    return [{"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True}] if options.tls_secret else []


def endpoint_secret_volumes(options: DeployOptions) -> list[dict[str, Any]]:
    """The endpoint's client-facing TLS Secret and its token Secret, when asked for."""
    volumes = []
    if options.endpoint_tls_secret:
        secret = {"secretName": options.endpoint_tls_secret, "defaultMode": SECRET_MODE}
        volumes.append({"name": "endpoint-tls", "secret": secret})
    if options.token_secret:
        items = [{"key": "token", "path": "token"}]
        secret = {"secretName": options.token_secret, "items": items, "defaultMode": SECRET_MODE}
        volumes.append({"name": "token", "secret": secret})
    return volumes


def endpoint_secret_mounts(options: DeployOptions) -> list[dict[str, Any]]:
    mounts = []
    if options.endpoint_tls_secret:
        mounts.append({"name": "endpoint-tls", "mountPath": ENDPOINT_TLS_MOUNT, "readOnly": True})
    if options.token_secret:
        mounts.append({"name": "token", "mountPath": TOKEN_MOUNT, "readOnly": True})
    return mounts


def shared_mounts() -> list[dict[str, Any]]:
    """The mounts every container has: build folder, plan ConfigMap, /tmp."""
    return [
        {"name": "build", "mountPath": BUILD_MOUNT, "readOnly": True},
        {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        dict(SCRATCH),
    ]


def verify_container(image: str, sums_key: str) -> dict[str, Any]:
    """The init container that checks the mounted build against the plan ConfigMap's `sums_key` (sha256):
    a pod refuses a volume holding another build than the manifests were made from."""
    return {
        "name": "verify-artifacts",
        "image": image,
        "command": ["sha256sum", "--check", "--strict", f"{CONFIG_MOUNT}/{sums_key}"],
        "workingDir": BUILD_MOUNT,
        "volumeMounts": shared_mounts(),
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
        "securityContext": container_security(),
    }
