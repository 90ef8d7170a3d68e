"""Timing candidate plans for real (`nndeploy plan --check-top K`): each stage model on this host with
onnxruntime at its device's thread count, combined with the plan's predicted transfers into measured
latency and throughput.

Only stages on devices this host can run natively are timed (targets/measure/profiling.py decides); links
between devices cannot be measured on one host, so the measured figures use the plan's predicted transfer
times.
onnxruntime is imported inside the functions (through profiling.session).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from nndeploy.errors import ProfileError
from nndeploy.targets.measure.profiling import random_feeds, session, time_runs, why_not_measurable
from nndeploy.types import Device, Plan


class PlanCheckError(ProfileError):
    """A plan check cannot time a candidate plan here (a stage on a device this host cannot run)."""


@dataclass(frozen=True)
class PlanMeasurement:
    """One plan timed on this host: per-stage compute milliseconds and the thread count each ran on, and
    the end-to-end figures with the plan's predicted transfers added (`bottleneck_ms`: the slowest stage
    or transfer)."""

    stage_ms: tuple[float, ...]
    threads: tuple[int, ...]
    latency_ms: float
    throughput_per_s: float
    bottleneck_ms: float


def stage_threads(device: Device) -> int:
    """The thread count a stage on `device` is timed with: the profile's core count (tvm_target
    num-cores), at most this host's CPU count; all of this host's CPUs when the profile gives none."""
    host = os.cpu_count() or 1
    cores = device.tvm_target.get("num-cores")
    return max(1, min(int(cores), host)) if cores else host


def refuse_unrunnable(plans: Sequence[Plan], flags: frozenset[str] | None = None) -> None:
    """Raise PlanCheckError, in one line naming every such device and why, if a stage of any plan is on a
    device this host cannot run natively (`flags`: CPU features in LLVM's spelling, default this host's)."""
    reasons: dict[str, str] = {}
    for the_plan in plans:
        for stage in the_plan.stages:
            device = the_plan.cluster.device(stage.device)
            if device.name not in reasons:
                reasons[device.name] = why_not_measurable(device, flags) or ""
    bad = {name: why for name, why in reasons.items() if why}
    if bad:
        listed = "; ".join(
            f"device '{name}' ({plans[0].cluster.device(name).profile}): {why}" for name, why in bad.items()
        )
        raise PlanCheckError(
            f"cannot time the candidate plans on this host: {listed}. "
            "Check plans on a cluster whose stage devices this host can run (plan without --check-top)"
        )


def measured_figures(the_plan: Plan, stage_ms: Sequence[float], threads: Sequence[int]) -> PlanMeasurement:
    """Measured latency (input transfer + measured stage times + the plan's predicted stage transfers) and
    throughput (batch / the slowest of those) of `the_plan`, given its stages' measured milliseconds."""
    if len(stage_ms) != len(the_plan.stages):
        raise ValueError(f"{len(stage_ms)} stage times for a plan of {len(the_plan.stages)} stages")
    transfers = [the_plan.input_transfer_ms, *(stage.transfer_ms for stage in the_plan.stages)]
    latency = sum(stage_ms) + sum(transfers)
    bottleneck = max([*stage_ms, *transfers])
    return PlanMeasurement(
        stage_ms=tuple(float(ms) for ms in stage_ms),
        threads=tuple(int(t) for t in threads),
        latency_ms=float(latency),
        throughput_per_s=the_plan.batch * 1e3 / max(bottleneck, 1e-9),
        bottleneck_ms=float(bottleneck),
    )


def measure_plans(
    plans: Sequence[Plan],
    stage_models: Sequence[Sequence[onnx.ModelProto]],
    rounds: int = 3,
    budget_s: float = 0.3,
) -> list[PlanMeasurement]:
    """Time every plan's stage models (`stage_models[p][s]`: plan p's stage s, as partitioner.split cuts
    it) and return each plan's measured figures. Refuses first if a stage's device cannot run here.

    A stage model that several plans share (same model, same thread count) is timed once. Each stage's
    time is profiling.time_runs's lower quartile; all stages are timed round-robin `rounds` times and
    each keeps its lowest, so a burst of load from other processes hits one round, not one plan."""
    refuse_unrunnable(plans)
    keys: list[list[tuple[str, int]]] = []
    runners: dict[tuple[str, int], tuple[Any, dict[str, np.ndarray]]] = {}
    for the_plan, models in zip(plans, stage_models, strict=True):
        if len(models) != len(the_plan.stages):
            raise ValueError(f"{len(models)} stage models for a plan of {len(the_plan.stages)} stages")
        plan_keys = []
        for stage, model in zip(the_plan.stages, models, strict=True):
            threads = stage_threads(the_plan.cluster.device(stage.device))
            key = (hashlib.sha256(model.SerializeToString()).hexdigest(), threads)
            if key not in runners:
                runners[key] = (session(model, threads), random_feeds(model))
            plan_keys.append(key)
        keys.append(plan_keys)
    best: dict[tuple[str, int], float] = {}
    for _ in range(max(1, rounds)):
        for key, (sess, feeds) in runners.items():
            ms = time_runs(lambda sess=sess, feeds=feeds: sess.run(None, feeds), budget_s=budget_s)
            best[key] = min(ms, best.get(key, ms))
    return [
        measured_figures(the_plan, [best[k] for k in plan_keys], [k[1] for k in plan_keys])
        for the_plan, plan_keys in zip(plans, keys, strict=True)
    ]
