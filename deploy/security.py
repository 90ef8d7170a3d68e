"""The security settings every emitted pod shares: a non-root user, no privilege escalation, no Linux
capabilities, the runtime's default seccomp profile, and (outside Ray) a read-only root filesystem with a
writable emptyDir at /tmp."""

from __future__ import annotations

from typing import Any

RUNTIME_UID = 1000  # the non-root user of deploy/docker/Dockerfile.*
SCRATCH = {"name": "tmp", "mountPath": "/tmp"}


def container_security(read_only_root: bool = True) -> dict[str, Any]:
    """A container's securityContext; Ray writes its session files under the root filesystem's /tmp and
    home, so Ray containers keep it writable (`read_only_root=False`)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": read_only_root,
    }


def pod_security() -> dict[str, Any]:
    """A pod's securityContext: runs as the image's non-root user; mounted Secrets readable by its group."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_UID,
        "fsGroup": RUNTIME_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def scratch_volume() -> dict[str, Any]:
    """The emptyDir behind /tmp (Python, TVM and gRPC may write temporary files)."""
    return {"name": SCRATCH["name"], "emptyDir": {"sizeLimit": "256Mi"}}
