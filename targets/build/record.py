"""A stage build's outcome (BuildRecord) and the content-addressed build cache's key and folder."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nndeploy.types import Artifact, Device

BUILDER_VERSION = "12"  # bump when the pipeline changes, so cached builds are not reused


@dataclass(frozen=True)
class BuildRecord:
    """The outcome of building one stage: its artifact, or the one-line reason it failed."""

    stage: int
    device: str
    artifact: Artifact | None
    seconds: float
    cached: bool
    error: str | None = None
    sources: dict[str, str] = field(default_factory=dict)


def tvm_version() -> str:
    """The installed TVM version (without importing TVM)."""
    from importlib.metadata import version

    return version("apache-tvm")


def cache_dir() -> Path:
    """Where built artifacts are kept by content key, shared by every build folder."""
    import os

    base = (
        os.environ.get("NNDEPLOY_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nndeploy"
    )
    return Path(base) / "builds"


def build_key(stage_bytes: bytes, device: Device, options: dict[str, Any]) -> str:
    """Content key of a build: stage model bytes, target, options, TVM and builder versions."""
    digest = hashlib.sha256(stage_bytes)
    digest.update(
        json.dumps(
            [device.tvm_target, device.arch, options, tvm_version(), BUILDER_VERSION], sort_keys=True
        ).encode()
    )
    return digest.hexdigest()
