"""build/manifest.json: what was built for each stage of a plan, and the checks made before loading it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nndeploy.errors import ArtifactError
from nndeploy.paths import inside
from nndeploy.planfile import schema_problem
from nndeploy.types import Artifact

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = "1.0"


@dataclass(frozen=True)
class StageBuild:
    """One stage's entry: its device and artifact (None if the build failed, with the reason)."""

    stage: int
    device: str
    device_arch: str
    artifact: Artifact | None
    build_seconds: float
    cached: bool
    error: str | None = None

    @property
    def status(self) -> str:
        """'built' (TVM), 'fallback' (all onnxruntime), 'partial fallback' (TVM parts and onnxruntime
        regions) or 'failed'."""
        if self.artifact is None:
            return "failed"
        if self.artifact.fallback:
            return "fallback"
        return "partial fallback" if any(p.fallback for p in self.artifact.parts) else "built"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "stage": self.stage,
            "device": self.device,
            "device_arch": self.device_arch,
            "status": self.status,
            "artifact": self.artifact.to_dict() if self.artifact else None,
            "build_seconds": self.build_seconds,
            "cached": self.cached,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageBuild:
        """Inverse of `to_dict`."""
        artifact = Artifact.from_dict(data["artifact"]) if data.get("artifact") else None
        return cls(
            stage=int(data["stage"]),
            device=data["device"],
            device_arch=data["device_arch"],
            artifact=artifact,
            build_seconds=float(data["build_seconds"]),
            cached=bool(data["cached"]),
            error=data.get("error"),
        )


@dataclass(frozen=True)
class Manifest:
    """Everything `verify`, `inspect`, `serve` and `deploy` need to find and trust a build."""

    plan_file: str
    model_path: str
    model_sha256: str
    tvm_version: str
    stages: tuple[StageBuild, ...]
    # Builds of the same plan at other batch sizes (`compile --batch-sizes`): (batch, sub-folder), each a
    # build folder of its own; the plan's own batch is this build.
    batches: tuple[tuple[int, str], ...] = ()

    @property
    def ok(self) -> bool:
        """Whether every stage has an artifact."""
        return all(s.artifact is not None for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "schema_version": MANIFEST_VERSION,
            "plan_file": self.plan_file,
            "model_path": self.model_path,
            "model_sha256": self.model_sha256,
            "tvm_version": self.tvm_version,
            "stages": [s.to_dict() for s in self.stages],
            **({"batch_builds": {str(b): folder for b, folder in self.batches}} if self.batches else {}),
        }


def write_manifest(manifest: Manifest, build_dir: Path) -> Path:
    """Write build_dir/manifest.json."""
    path = build_dir / MANIFEST_NAME
    path.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


def read_manifest(build_dir: str | Path) -> Manifest:
    """Load build_dir/manifest.json, with a one-line error if it is missing or malformed."""
    path = Path(build_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(
            f"{build_dir}: no {MANIFEST_NAME}; build it with nndeploy compile plan.json -o {build_dir}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("schema_version") != MANIFEST_VERSION:
            version = data.get("schema_version") if isinstance(data, dict) else None
            raise ValueError(f"schema_version {version!r} is not {MANIFEST_VERSION}")
        problem = schema_problem(data, "manifest")
        if problem is not None:
            raise ValueError(problem)
        manifest = Manifest(
            plan_file=data["plan_file"],
            model_path=data["model_path"],
            model_sha256=data["model_sha256"],
            tvm_version=data["tvm_version"],
            stages=tuple(StageBuild.from_dict(s) for s in data["stages"]),
            batches=tuple(sorted((int(b), str(f)) for b, f in data.get("batch_builds", {}).items())),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{path}: not a valid nndeploy manifest ({exc}); compile again") from None
    escaping = (
        [f"plan_file '{manifest.plan_file}'"] if inside(Path(build_dir), manifest.plan_file) is None else []
    )
    escaping += [f"batch {b} build '{f}'" for b, f in manifest.batches if inside(Path(build_dir), f) is None]
    for stage in manifest.stages:
        if stage.artifact is None:
            continue
        for artifact in (stage.artifact, *stage.artifact.parts):
            names = {"artifact": artifact.path, **dict(artifact.options.get("sources", {}))}
            escaping += [
                f"stage {stage.stage} {kind} '{name}'"
                for kind, name in names.items()
                if inside(Path(build_dir), name) is None
            ]
    if escaping:
        raise ArtifactError(
            f"{path}: {', '.join(escaping)} not a file inside {build_dir}; refusing a tampered manifest "
            "(compile again)"
        )
    return manifest


def checked_artifact_path(build_dir: Path, artifact: Artifact) -> Path:
    """The artifact's file (and its parts' files), after checking each exists and its sha256 matches the
    manifest."""
    from nndeploy.model_prep import file_sha256

    for part in artifact.parts:
        checked_artifact_path(build_dir, part)
    path = build_dir / artifact.path
    if not path.is_file():
        raise ArtifactError(f"{path}: stage {artifact.stage}'s artifact is missing; compile again")
    actual = file_sha256(path)
    if actual != artifact.sha256:
        raise ArtifactError(
            f"{path}: sha256 {actual[:12]}... does not match the manifest ({artifact.sha256[:12]}...); "
            "the artifact is corrupt or was modified: refusing to load it, compile again"
        )
    return path


def batch_builds(build_dir: Path, manifest: Manifest) -> dict[int, tuple[Path, Manifest]]:
    """The build's sub-builds at other batch sizes: {batch: (folder, its manifest)}."""
    return {
        batch: (Path(build_dir) / folder, read_manifest(Path(build_dir) / folder))
        for batch, folder in manifest.batches
    }
