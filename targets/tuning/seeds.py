"""A tuning task's first batch when tuned workloads of its kind exist: their schedules carried over to it
(`tuning.transfer`), from the shipped knowledge and from the database being tuned, best ranked first by
the shipped cost model. `tune` measures them as real trials instead of random samples, and sets a task
aside once it is within reach of the time they predict (while other tasks are not)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nndeploy.targets.tuning import shipped, transfer
from nndeploy.types import Device

# A task seeded with transferred schedules yields to the others once its best is this close to the time the
# tuned workloads it was seeded from reach (scaled by FLOPs): more trials there rarely pay, other tasks may.
NEAR_PREDICTED = 0.03


def reached(best_ms: float | None, predicted_ms: float | None) -> bool:
    """Whether a task is within NEAR_PREDICTED of its predicted best (the budget goes elsewhere first)."""
    return best_ms is not None and predicted_ms is not None and best_ms <= predicted_ms * (1 + NEAR_PREDICTED)


class TransferSeeds:
    """The carried-over schedules of a tuning run's workloads (its databases read once, at the start)."""

    def __init__(self, mods: Sequence[Any], device: Device, database: Any) -> None:
        import tvm

        self.target = tvm.target.Target(device.tvm_target)
        self.sources = transfer.sources_of(database)
        knowledge = shipped.knowledge(device.tvm_target)
        if knowledge is not None:
            self.sources.extend(shipped.matched(knowledge, list(mods))[1])
        self.rank = shipped.ranker_for(knowledge, device.tvm_target)

    def traces(self, mod: Any, count: int) -> tuple[list[Any], float | None]:
        """Up to `count` carried-over schedules (traces) of the workload `mod`, best first ([] if none),
        and the predicted best time of `mod` in ms: the fastest source record's, scaled by FLOPs."""
        found = transfer.ranked_candidates(mod, self.sources, self.target, self.rank)
        predicted = min((c.estimate_s for c in found if c.estimate_s > 0), default=None)
        return [candidate.trace for candidate in found[:count]], predicted and predicted * 1e3
