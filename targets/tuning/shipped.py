"""The tuning knowledge that ships inside the package: per CPU target, the best record of every workload of
the tuning corpus (benchmarks/corpus.py), an index of those workloads' structures for transfer, and an
XGBoost cost model trained on every record the corpus measured.

Layout, under targets/tuning/shipped/<target folder>/ (the folder name of `database.target_key`):
`database_workload.json.gz` and `database_tuning_record.json.gz` (a MetaSchedule JSON database, gzipped;
its cold-weights half in `weights-cold/`), `index.json` (workload hash -> signature, shape, FLOPs),
`cost_model.json` (the XGBoost booster) and `corpus.json` (how it was built). A build loads only the
workloads its stage matches (`subset`). A target without a folder of its own uses the folder of the same LLVM
CPU and triple (another core count): tile sizes and vector widths do not depend on the core count.

NNDEPLOY_SHIPPED_TUNING=0 (`nndeploy compile --no-shipped`) turns the shipped knowledge off.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from nndeploy.targets.tuning import database as tuning_db
from nndeploy.targets.tuning.metaschedule import threaded_map
from nndeploy.targets.tuning.transfer import TOP_K

SHIPPED_ROOT = Path(__file__).parent / "shipped"
SWITCH_ENV = "NNDEPLOY_SHIPPED_TUNING"
INDEX = "index.json"
COST_MODEL = "cost_model.json"
CORPUS = "corpus.json"
FILES = (tuning_db.WORKLOADS, tuning_db.RECORDS)
# Records kept per workload: its best one is applied, the others are further candidates for transfer.
KEEP = 4


@dataclass(frozen=True)
class Knowledge:
    """The shipped knowledge of one target, ready to use."""

    folder: Path  # the packaged folder
    fingerprint: str  # sha256 over the packaged files: part of a build's cache key
    # "warm:<workload hash>" or "cold:<workload hash>" -> {"signature", "shape", "flops"}
    index: dict[str, Any]
    cost_model: Path | None


def enabled() -> bool:
    """Whether builds use the shipped knowledge (NNDEPLOY_SHIPPED_TUNING is not 0/false/no/off)."""
    return os.environ.get(SWITCH_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def shipped_folder(tvm_target: dict[str, Any], root: Path = SHIPPED_ROOT) -> Path | None:
    """The packaged folder for `tvm_target`: its own, else one of the same kind, CPU and triple."""
    own = tuning_db.target_db_dir(root, tvm_target)
    if (own / CORPUS).is_file():
        return own
    if not root.is_dir():
        return None
    wanted = _cpu_of(tvm_target)
    for folder in sorted(root.iterdir()):
        corpus = folder / CORPUS
        try:
            if corpus.is_file() and _cpu_of(json.loads(corpus.read_text()).get("tvm_target", {})) == wanted:
                return folder
        except ValueError:  # a damaged folder is reported when it is used, not here
            continue
    return None


def _cpu_of(tvm_target: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(tvm_target.get(key, "")) for key in ("kind", "mtriple", "mcpu", "mattr"))


def knowledge(tvm_target: dict[str, Any]) -> Knowledge | None:
    """The shipped knowledge for `tvm_target`; None when none ships for it, it is turned off, or the
    target is not a CPU. A damaged package is a TuningDatabaseError (the caller builds without it)."""
    if not enabled() or tvm_target.get("kind") != "llvm":
        return None
    folder = shipped_folder(tvm_target)
    return None if folder is None else _knowledge(folder)


@lru_cache(maxsize=8)
def _knowledge(folder: Path) -> Knowledge:
    from nndeploy.errors import TuningDatabaseError

    digest = hashlib.sha256()
    try:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
        index = json.loads((folder / INDEX).read_text())
        if not isinstance(index, dict):
            raise ValueError(f"{INDEX} is not a JSON object")
    except (OSError, ValueError) as exc:
        raise TuningDatabaseError(f"the shipped tuning database {folder.name} is damaged ({exc})") from None
    model = folder / COST_MODEL
    return Knowledge(folder, digest.hexdigest(), index, model if model.is_file() else None)


def subset(shipped: Knowledge, keys: set[str]) -> list[tuple[bool, Any]]:
    """(weights cold, in-memory MetaSchedule database) holding only the workloads `keys` ("warm:<hash>" /
    "cold:<hash>", as in the index) with their records: loading the whole database would parse every
    workload's TIR, seconds per stage for what a stage uses a few of."""
    from tvm.s_tir import meta_schedule as ms

    from nndeploy.errors import TuningDatabaseError

    found = []
    for cold in (False, True):
        wanted = {key.split(":", 1)[1] for key in keys if key.startswith(_half(cold) + ":")}
        if not wanted:
            continue
        database = ms.database.MemoryDatabase()
        try:
            workloads, records = _lines(shipped.folder, cold)
            pending = []
            for number, line in enumerate(workloads):
                entry = json.loads(line)
                if str(entry[0]) not in wanted:
                    continue
                workload = database.commit_workload(ms.database.Workload.from_json(entry).mod)
                # A build applies a workload's best record and transfers at most TOP_K of them.
                fastest = sorted(records.get(number, []), key=_mean_seconds)[:TOP_K]
                pending.extend((record, workload) for record in fastest)
            # Parsing a record re-applies its trace (~9 ms each): spread over the cores.
            for record in threaded_map(lambda pair: ms.database.TuningRecord.from_json(*pair), pending):
                database.commit_tuning_record(record)
        except Exception as exc:  # TVM raises many types for a record it cannot read
            from nndeploy.errors import first_line

            raise TuningDatabaseError(
                f"the shipped tuning database {shipped.folder.name} cannot be read: {first_line(exc)}"
            ) from None
        found.append((cold, database))
    return found


def matched(shipped: Knowledge, mods: list[Any]) -> tuple[list[tuple[bool, Any]], list[Any]]:
    """What the workloads `mods` need of the shipped knowledge: (weights cold, database) holding each
    one's own records, or else its nearest tuned workloads of the same kind (`subset`), and those
    workloads as transfer sources (`transfer.Source`, described by the index)."""
    from nndeploy.targets.tuning.transfer import sources_of, wanted_keys

    halves = subset(shipped, wanted_keys(mods, shipped.index))
    found = []
    for cold, database in halves:
        prefix = _half(cold) + ":"
        index = {key[len(prefix) :]: entry for key, entry in shipped.index.items() if key.startswith(prefix)}
        found.extend(sources_of(database, index))
    return halves, found


def ranker_for(shipped: Knowledge | None, tvm_target: dict[str, Any]) -> Any:
    """The shipped cost model as `cost_model.ranker` (None: no knowledge, or it has no cost model)."""
    from nndeploy.targets.tuning.cost_model import ranker

    if shipped is None or shipped.cost_model is None:
        return None
    return ranker(shipped.cost_model, tvm_target)


def _mean_seconds(record: list[Any]) -> float:
    """A packed record's mean measured run time (its second field); unmeasured ones last."""
    seconds = [float(s) for s in record[1] or ()]
    return sum(seconds) / len(seconds) if seconds else float("inf")


def _half(cold: bool) -> str:
    return "cold" if cold else "warm"


@lru_cache(maxsize=4)
def _lines(folder: Path, cold: bool) -> tuple[list[str], dict[int, list[Any]]]:
    """The workload lines of one half of a packed database, and its records (parsed JSON) by workload."""
    half = tuning_db.half_dir(folder, cold)
    with gzip.open(half / (tuning_db.WORKLOADS + ".gz"), "rt") as handle:
        workloads = [line for line in handle.read().splitlines() if line.strip()]
    records: dict[int, list[Any]] = {}
    with gzip.open(half / (tuning_db.RECORDS + ".gz"), "rt") as handle:
        for line in handle.read().splitlines():
            if line.strip():
                number, record = json.loads(line)
                records.setdefault(int(number), []).append(record)
    return workloads, records


def pack(
    db_root: Path,
    tvm_target: dict[str, Any],
    models: list[str],
    root: Path = SHIPPED_ROOT,
) -> dict[str, Any]:
    """Pack the tuning database of `tvm_target` under `db_root` into the package (see the module
    docstring): best records only, the transfer index, the cost model trained on every record.
    Returns what was written (workloads, records, trials, bytes)."""
    from nndeploy.targets.tuning.cost_model import train

    source = tuning_db.target_db_dir(db_root, tvm_target)
    out = tuning_db.target_db_dir(root, tvm_target)
    shutil.rmtree(out, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="pack-") as scratch:
        best = Path(scratch)
        workloads, _ = tuning_db.export_best(source, best, keep=KEEP)
        for half in (best, tuning_db.cold_dir(best)):
            for name in FILES:
                if (half / name).is_file():
                    target = out / half.relative_to(best) / (name + ".gz")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with (half / name).open("rb") as data, gzip.open(target, "wb", compresslevel=9) as handle:
                        shutil.copyfileobj(data, handle)
        (out / INDEX).write_text(json.dumps(_index(best), separators=(",", ":")))
    trials = sum(
        sum(tuning_db.trials_per_workload(half).values()) for half in (source, tuning_db.cold_dir(source))
    )
    trained = train(source, tvm_target, out / COST_MODEL)
    summary = {
        "tvm_target": tvm_target,
        "models": models,
        "workloads": workloads,
        "trials": trials,
        "cost_model_records": trained,
        "tvm_version": _tvm_version(),
    }
    (out / CORPUS).write_text(json.dumps(summary, indent=1) + "\n")
    summary["bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return summary


def reindex(folder: Path) -> int:
    """Write the transfer index of a shipped folder anew from its own packed database (after a change to
    how workloads are described); returns how many workloads it describes."""
    with tempfile.TemporaryDirectory(prefix="reindex-") as scratch:
        plain = Path(scratch)
        for packed in folder.rglob("*.json.gz"):
            target = plain / packed.relative_to(folder).with_suffix("")
            target.parent.mkdir(parents=True, exist_ok=True)
            with gzip.open(packed, "rb") as data, target.open("wb") as handle:
                shutil.copyfileobj(data, handle)
        index = _index(plain)
    (folder / INDEX).write_text(json.dumps(index, separators=(",", ":")))
    return len(index)


def _index(db_dir: Path) -> dict[str, Any]:
    """ "warm:<hash>" / "cold:<hash>" -> the workload's structure signature, shape and FLOPs."""
    from nndeploy.targets.tuning.metaschedule import open_databases, workload_hash
    from nndeploy.targets.tuning.transfer import shape_of, signature, workload_flops

    found = {}
    for cold, database in open_databases(db_dir):
        for record in database.get_all_tuning_records():
            mod = record.workload.mod
            found[f"{_half(cold)}:{workload_hash(mod)}"] = {
                "signature": signature(mod),
                "shape": list(shape_of(mod)),
                "flops": workload_flops(mod),
            }
    return found


def _tvm_version() -> str:
    import tvm

    return str(tvm.__version__)
