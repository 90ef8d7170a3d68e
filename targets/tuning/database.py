"""The tuning database on disk: one MetaSchedule JSON database per TVM target inside a `--db` folder.

Records are keyed by workload (TVM's structural hash of the scheduled function) inside a folder keyed by
the target, so a convolution shape tuned for one stage or model is reused by every other stage and model
built for the same target, and a schedule tuned for one CPU is never applied to another. Workloads of
stages whose weights exceed the CPU's cache are measured with cold weights (`tuning.cold`); their
records go to a second database in the target folder's `weights-cold/`, since their timings cannot be
ranked against warm ones. Nothing here imports TVM: `compile` reads the fingerprint to key its build
cache, `tune` counts records per workload.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from nndeploy.errors import BuildError

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
COLD = "weights-cold"


def target_key(tvm_target: dict[str, Any]) -> str:
    """Folder name of a target's database: readable kind and CPU, plus a hash of the whole target."""
    canonical = json.dumps(tvm_target, sort_keys=True)
    cpu = str(tvm_target.get("mcpu") or tvm_target.get("arch") or tvm_target.get("mtriple") or "generic")
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{tvm_target.get('kind', 'target')}-{cpu}")
    return f"{readable}-{hashlib.sha256(canonical.encode()).hexdigest()[:10]}"


def target_db_dir(db_root: Path, tvm_target: dict[str, Any]) -> Path:
    """The folder holding the MetaSchedule database for `tvm_target` under `db_root`."""
    return Path(db_root) / target_key(tvm_target)


def cold_dir(db_dir: Path) -> Path:
    """The database of workloads measured with cold weights, inside a target's folder."""
    return Path(db_dir) / COLD


def half_dir(db_dir: Path, weights_cold: bool) -> Path:
    """The folder of the target's warm or cold-weights database."""
    return cold_dir(db_dir) if weights_cold else Path(db_dir)


def has_records(db_dir: Path) -> bool:
    """Whether `db_dir` (or its cold-weights database) holds at least one tuning record."""
    return _holds_records(db_dir) or _holds_records(cold_dir(db_dir))


def _holds_records(folder: Path) -> bool:
    path = Path(folder) / RECORDS
    return path.is_file() and path.stat().st_size > 0


def fingerprint(db_dir: Path) -> str:
    """sha256 over the database files (empty string when there is no database): part of a build's key."""
    if not has_records(db_dir):
        return ""
    digest = hashlib.sha256()
    for folder in (db_dir, cold_dir(db_dir)):
        for name in (WORKLOADS, RECORDS):
            path = folder / name
            if path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


def workload_hashes(db_dir: Path) -> list[str]:
    """The structural hash of each workload in the database, by workload index."""
    path = db_dir / WORKLOADS
    if not path.is_file():
        return []
    hashes = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            hashes.append(str(json.loads(line)[0]))
        except (ValueError, IndexError, TypeError):
            raise BuildError(
                f"{path}:{number}: not a MetaSchedule workload line; the tuning database is damaged "
                "(delete the folder to start over)"
            ) from None
    return hashes


def trials_per_workload(db_dir: Path) -> Counter[str]:
    """How many measured trials the database holds for each workload (by structural hash)."""
    hashes = workload_hashes(db_dir)
    counts: Counter[str] = Counter()
    path = db_dir / RECORDS
    if not path.is_file():
        return counts
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            index = int(json.loads(line)[0])
            counts[hashes[index]] += 1
        except (ValueError, IndexError, TypeError):
            raise BuildError(
                f"{path}:{number}: not a MetaSchedule tuning record; the tuning database is damaged "
                "(delete the folder to start over)"
            ) from None
    return counts


EXHAUSTED_FILE = "exhausted_workloads.json"


def exhausted_workloads(db_dir: Path) -> set[str]:
    """Workloads whose whole search space has been measured (no further trials are possible)."""
    path = db_dir / EXHAUSTED_FILE
    if not path.is_file():
        return set()
    try:
        return {str(w) for w in json.loads(path.read_text())}
    except (ValueError, TypeError):
        raise BuildError(f"{path}: not a JSON list; delete it (it is rebuilt by the next tune)") from None


def mark_exhausted(db_dir: Path, workloads: set[str]) -> None:
    """Remember that these workloads cannot be tuned further."""
    if workloads:
        path = db_dir / EXHAUSTED_FILE
        path.write_text(json.dumps(sorted(exhausted_workloads(db_dir) | workloads)))


def export_best(db_dir: Path, out_dir: Path, keep: int = 1) -> tuple[int, int]:
    """Copy `db_dir` into `out_dir` keeping only each workload's `keep` fastest records (a build applies
    the fastest): a database small enough to ship or commit. Returns (workloads, records) written.
    Workloads without a successful measurement are left out. The cold-weights database is exported
    alongside."""
    exported = _export_best_one(db_dir, out_dir, keep)
    if _holds_records(cold_dir(db_dir)):
        cold = _export_best_one(cold_dir(db_dir), cold_dir(out_dir), keep)
        exported = (exported[0] + cold[0], exported[1] + cold[1])
    return exported


def _export_best_one(db_dir: Path, out_dir: Path, keep: int) -> tuple[int, int]:
    hashes = workload_hashes(db_dir)
    lines = (db_dir / WORKLOADS).read_text().splitlines() if hashes else []
    workload_lines = [line for line in lines if line.strip()]
    found: dict[int, list[tuple[float, str]]] = {}
    records = db_dir / RECORDS
    for line in records.read_text().splitlines() if records.is_file() else []:
        if not line.strip():
            continue
        index, (_, run_secs, *_rest) = json.loads(line)
        if not run_secs:
            continue
        found.setdefault(index, []).append((sum(float(s) for s in run_secs) / len(run_secs), line))
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = sorted(found)
    renumber = {old: new for new, old in enumerate(kept)}
    (out_dir / WORKLOADS).write_text("".join(workload_lines[old] + "\n" for old in kept))
    written = 0
    with (out_dir / RECORDS).open("w") as handle:
        for old in kept:
            for _, line in sorted(found[old], key=lambda entry: entry[0])[:keep]:
                record = json.loads(line)
                record[0] = renumber[old]
                handle.write(json.dumps(record, separators=(",", ":")) + "\n")
                written += 1
    return len(kept), written
