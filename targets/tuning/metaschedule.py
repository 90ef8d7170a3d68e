"""Thin helpers over MetaSchedule's objects shared by the tuning room: a tuning database folder opened
read-only, a workload's key, and a TuneContext that costs nothing to make."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nndeploy.targets.tuning import database as tuning_db


def open_databases(db_dir: Path) -> list[tuple[bool, Any]]:
    """(weights cold, MetaSchedule database) of the halves that exist in `db_dir` (warm first),
    read-only."""
    from tvm.s_tir import meta_schedule as ms

    found = []
    for cold in (False, True):
        half = tuning_db.half_dir(db_dir, cold)
        if (half / tuning_db.RECORDS).is_file():
            database = ms.database.JSONDatabase(
                path_workload=str(half / tuning_db.WORKLOADS),
                path_tuning_record=str(half / tuning_db.RECORDS),
                allow_missing=False,
            )
            found.append((cold, database))
    return found


def workload_hash(mod: Any) -> int:
    """TVM's structural hash of a workload module (the tuning database's key)."""
    import tvm_ffi

    return int(tvm_ffi.structural_hash(mod))


def light_context(mod: Any, target: Any) -> Any:
    """A MetaSchedule TuneContext holding only `mod` and `target`. TuneContext's Python constructor
    imports every tensor intrinsic TVM has first (13.7 s measured here), which post-processors and
    feature extraction never use; the C++ constructor is called directly."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule import _ffi_api
    from tvm.s_tir.meta_schedule.logging import get_logger, get_logging_func

    context = ms.TuneContext.__new__(ms.TuneContext)
    logging = get_logging_func(get_logger(__name__))
    context.__init_handle_by_constructor__(
        _ffi_api.TuneContext, mod, target, None, None, "main", 1, -1, logging
    )
    return context
