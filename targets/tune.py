"""The `tune` verb: tune every CPU stage of a plan this machine can measure, into a shared database.

Stages are grouped by TVM target; each group's tasks are merged by workload (a shape that occurs in
several stages, or was tuned for another model, is tuned once) and tuned within its share of the budget.
Stages whose device this machine cannot measure are skipped with the reason: timings taken under the
aarch64 emulator say nothing about the board, and CUDA tuning needs a GPU and TVM's CUDA runtime.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import onnx

from nndeploy.targets.tuning import database as tuning_db
from nndeploy.targets.tuning.remote import Remote
from nndeploy.targets.tuning.tuner import Progress, why_not_tunable
from nndeploy.types import Device, Plan


def _why_not_remote(device: Device, name: str) -> str | None:
    """Why a stage is not tuned over RPC on device `name` (None: it is)."""
    if device.name != name:
        return f"only device '{name}' is tuned over --rpc"
    if device.tvm_target.get("kind") != "llvm":
        return f"TVM target kind '{device.tvm_target.get('kind')}' is not tuned over RPC (CPU devices only)"
    return None


@dataclass(frozen=True)
class TargetTuning:
    """What one tuning run did for one target."""

    target_key: str
    devices: tuple[str, ...]
    stages: tuple[int, ...]
    tasks: int
    tasks_already_tuned: int  # had their trials in the database before this run
    tasks_complete: int  # have their trials now
    tasks_weights_cold: int  # measured with their weights evicted (the stage's weights exceed the cache)
    trials: int  # measured in this run
    seconds: float


@dataclass(frozen=True)
class TuneReport:
    """The outcome of `tune_plan`: per target what was tuned, per skipped stage why not."""

    db_root: str
    targets: tuple[TargetTuning, ...]
    skipped: tuple[tuple[int, str, str], ...]  # (stage, device, reason)

    @property
    def trials(self) -> int:
        """Trials measured in this run, over all targets."""
        return sum(t.trials for t in self.targets)


def tune_plan(
    plan: Plan,
    stage_models: Sequence[Path],
    db_root: Path,
    budget_s: float,
    trials_per_task: int = 256,
    on_progress: Callable[[str, Progress], None] | None = None,
    remote: tuple[str, Remote] | None = None,
) -> TuneReport:
    """Tune the plan's stages into `db_root` within `budget_s` seconds (a stage's target folder is
    `tuning_db.target_db_dir(db_root, target)`); `on_progress(target_key, tuning.Progress)` after each
    measured batch. With `remote` (device name, its RPC server) only that device's stages are tuned, each
    candidate timed on the device itself (`tuning.remote`)."""
    from nndeploy.targets.tuning import tuner as tuning

    groups: dict[str, list[tuple[int, Device, Path]]] = {}
    skipped: list[tuple[int, str, str]] = []
    for stage, path in zip(plan.stages, stage_models, strict=True):
        device = plan.cluster.device(stage.device)
        reason = why_not_tunable(device) if remote is None else _why_not_remote(device, remote[0])
        if reason is not None:
            skipped.append((stage.index, device.name, reason))
            continue
        groups.setdefault(tuning_db.target_key(device.tvm_target), []).append((stage.index, device, path))

    extracted = {}
    for key, members in groups.items():
        device = members[0][1]
        db_dir = tuning_db.target_db_dir(db_root, device.tvm_target)
        models = [(index, onnx.load(str(path))) for index, _, path in members]
        extracted[key] = (device, db_dir, tuning.extract_tasks(models, device, db_dir))

    deadline = time.perf_counter() + budget_s
    results = []
    open_counts = {k: sum(t.trials_done < trials_per_task for t in v[2]) for k, v in extracted.items()}
    for position, (key, (device, db_dir, tasks)) in enumerate(extracted.items()):
        remaining_open = sum(list(open_counts.values())[position:]) or 1
        share = max(0.0, deadline - time.perf_counter()) * open_counts[key] / remaining_open
        started = time.perf_counter()
        measure = None
        if remote is not None:
            from nndeploy.targets.artifacts.host_tools import cross_compiler
            from nndeploy.targets.tuning import remote as rpc

            rpc.connect(remote[1])  # a dead address fails in one line here, before anything is built
            measure = (rpc.builder(cross_compiler(device.tvm_target, device)), rpc.runner(remote[1]))
            tasks = [replace(task, weights_cold=False) for task in tasks]  # no cache eviction over RPC
        trials = tuning.tune_tasks(
            tasks,
            device,
            db_dir,
            share,
            trials_per_task,
            on_progress=(lambda p, key=key: on_progress(key, p)) if on_progress else None,
            measure=measure,
        )
        counts = {cold: tuning.trials_done(db_dir, cold) for cold in (False, True)}
        results.append(
            TargetTuning(
                target_key=key,
                devices=tuple(sorted({d.name for _, d, _ in groups[key]})),
                stages=tuple(index for index, _, _ in groups[key]),
                tasks=len(tasks),
                tasks_already_tuned=len(tasks) - open_counts[key],
                tasks_complete=sum(
                    counts[t.weights_cold].get(t.workload, 0) >= trials_per_task for t in tasks
                ),
                tasks_weights_cold=sum(t.weights_cold for t in tasks),
                trials=trials,
                seconds=time.perf_counter() - started,
            )
        )
    return TuneReport(str(db_root), tuple(results), tuple(skipped))
