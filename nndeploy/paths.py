"""File names read from plans and manifests, confined to their folder: a tampered manifest must not make
nndeploy read, load or serve a file from anywhere else."""

from __future__ import annotations

from pathlib import Path


def inside(folder: Path, name: object) -> Path | None:
    """folder/name if `name` is a relative path that stays inside `folder` (symbolic links resolved),
    else None."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        return None
    candidate = Path(name)
    if candidate.is_absolute() or ".." in candidate.parts:
        return None
    base = Path(folder).resolve()
    resolved = (base / candidate).resolve()
    if resolved != base and base not in resolved.parents:
        return None
    return Path(folder) / candidate
