"""The learned cost model that ranks schedules without measuring them: MetaSchedule's XGBoost model on its
per-store features, trained once on every record of a tuning database (the corpus) and saved as a plain
XGBoost booster file. Its score is a schedule's predicted speed relative to the best schedule of the same
workload (MetaSchedule's own training target), so it ranks candidates of one workload against each other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def features(mod: Any, target: Any, schedules: Sequence[Any]) -> list[np.ndarray]:
    """MetaSchedule's per-store features of each schedule of `mod` (one array per schedule)."""
    from tvm.s_tir import meta_schedule as ms

    from nndeploy.targets.tuning.metaschedule import light_context

    candidates = [ms.MeasureCandidate(s, ms.arg_info.ArgInfo.from_prim_func(mod["main"])) for s in schedules]
    extractor = ms.feature_extractor.PerStoreFeature()
    return [
        x.numpy().astype("float32") for x in extractor.extract_from(light_context(mod, target), candidates)
    ]


def train(db_dir: Path, tvm_target: dict[str, Any], out: Path) -> int:
    """Train the cost model on every record of the database at `db_dir` (both halves) and save the
    booster to `out`; returns the number of records it learned from."""
    import tvm
    from tvm.s_tir.meta_schedule.cost_model.xgb_model import XGBModel

    from nndeploy.targets.tuning.metaschedule import open_databases, replayed, workload_hash

    target = tvm.target.Target(tvm_target)
    groups: dict[int, tuple[Any, list[Any], list[float]]] = {}
    for _, database in open_databases(db_dir):
        for record in database.get_all_tuning_records():
            if not record.run_secs:
                continue
            mod = record.workload.mod
            try:
                schedule = replayed(mod, record.trace)
            except Exception:  # a record TVM cannot replay is not learned from
                continue
            seconds = float(np.median([float(s) for s in record.run_secs]))
            entry = groups.setdefault(workload_hash(mod), (mod, [], []))
            entry[1].append(schedule)
            entry[2].append(seconds)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for mod, schedules, costs in groups.values():
        xs.extend(features(mod, target, schedules))
        cost = np.array(costs)
        ys.append(cost.min() / cost)
    if not xs:
        return 0
    model = XGBModel(num_tuning_cores=2)
    model._train(xs=xs, ys=np.concatenate(ys))  # the model's own training step, without its data cache
    out.parent.mkdir(parents=True, exist_ok=True)
    model.booster.save_model(str(out))
    return len(xs)


def ranker(path: Path, tvm_target: dict[str, Any]) -> Callable[[Any, Sequence[Any]], Sequence[float]]:
    """rank(mod, schedules) -> predicted relative speed of each schedule (higher is faster), with the
    booster saved at `path`. A file XGBoost cannot read is a TuningDatabaseError."""
    import tvm
    import xgboost as xgb
    from tvm.s_tir.meta_schedule.cost_model.xgb_model import PackSum

    from nndeploy.errors import TuningDatabaseError, first_line

    booster = xgb.Booster()
    try:
        booster.load_model(str(path))
    except (xgb.core.XGBoostError, OSError, ValueError) as exc:
        raise TuningDatabaseError(f"the cost model {path} cannot be read: {first_line(exc)}") from None
    target = tvm.target.Target(tvm_target)

    def rank(mod: Any, schedules: Sequence[Any]) -> Sequence[float]:
        packed = PackSum(xs=features(mod, target, schedules), ys=None)
        return [float(v) for v in packed.predict_with_score(booster.predict(packed.dmatrix))]

    return rank
