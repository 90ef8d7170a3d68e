"""Best-of per stage: time the candidate builds of a stage on this machine and keep the fastest.

Candidates are the tuned TVM build, the untuned one, and onnxruntime itself, which is then flagged like
any fallback stage. They are timed interleaved,
in rounds, on the same random inputs, and the median of each is recorded in the manifest whichever wins.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from nndeploy.targets.artifacts.manifest import StageBuild
from nndeploy.targets.build.record import BuildRecord

ROUNDS = 5
RUNS_PER_ROUND = 5
ROUND_SECONDS = 0.1  # a candidate slower than this a run gets fewer runs a round (at least one)


def time_candidates(
    candidates: dict[str, tuple[Path, StageBuild]], seed: int = 0, feed: dict[str, np.ndarray] | None = None
) -> dict[str, float]:
    """Median milliseconds of each candidate (name -> (build folder, entry)), timed interleaved on
    `feed` (default: seeded random inputs)."""
    from nndeploy.oracle import random_inputs
    from nndeploy.targets.artifacts.loader import run_artifact

    if feed is None:
        first = next(iter(candidates.values()))[1].artifact
        assert first is not None
        feed = random_inputs(first.inputs, seed)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    slowest = 0.0
    for folder, entry in candidates.values():  # warm-up: load, check sha256, first runs
        slowest = max(slowest, *run_artifact(folder, entry, feed, repeats=2)[1])
    runs = max(1, min(RUNS_PER_ROUND, int(ROUND_SECONDS * 1e3 / max(slowest, 1e-3))))
    for _ in range(ROUNDS):
        for name, (folder, entry) in candidates.items():
            times[name].extend(run_artifact(folder, entry, feed, repeats=runs)[1])
    return {name: float(np.median(t)) for name, t in times.items()}


def choose(
    out_dir: Path,
    tuned: BuildRecord,
    untuned: BuildRecord,
    untuned_dir: Path,
    onnxruntime: BuildRecord | None,
    onnxruntime_dir: Path | None,
    device_arch: str,
) -> BuildRecord:
    """Time the candidates, move the winner's files into `out_dir`, and return its record with every
    candidate's median latency in its artifact options."""
    candidates: dict[str, tuple[Path, StageBuild]] = {}
    for name, record, folder in (
        ("tvm-tuned", tuned, out_dir),
        ("tvm-untuned", untuned, untuned_dir),
        ("onnxruntime", onnxruntime, onnxruntime_dir),
    ):
        if record is not None and record.artifact is not None and folder is not None:
            entry = StageBuild(
                record.stage, record.device, device_arch, record.artifact, record.seconds, cached=False
            )
            candidates[name] = (folder, entry)
    measured = time_candidates(candidates)
    winner = min(measured, key=measured.__getitem__)
    folder, entry = candidates[winner]
    record = {"tvm-tuned": tuned, "tvm-untuned": untuned, "onnxruntime": onnxruntime}[winner]
    assert record is not None and entry.artifact is not None
    if folder != out_dir:  # the tuned build's files make way for the winner's
        for path in out_dir.glob(f"stage_{record.stage}.*"):
            path.unlink()
        for path in folder.glob(f"stage_{record.stage}.*"):
            shutil.copyfile(path, out_dir / path.name)
    options = {
        **entry.artifact.options,
        "measured_ms": {name: round(ms, 4) for name, ms in measured.items()},
        "selected": winner,
    }
    if winner == "onnxruntime":
        options["reason"] = (
            f"measured faster than TVM here ({measured['onnxruntime']:.3f} ms against "
            + ", ".join(f"{n} {ms:.3f} ms" for n, ms in measured.items() if n != "onnxruntime")
            + ")"
        )
    return replace(record, artifact=replace(entry.artifact, options=options))
