"""`nndeploy plan --check-top K`: time the top-K candidate plans on this host and keep the best measured
one, with predicted and measured figures side by side (partitioner/candidates.py proposes,
targets/measure/plan_check.py times, this module wires them and prints)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from nndeploy.cli.common import out
from nndeploy.types import Cluster, FallbackNode, Graph, Plan

if TYPE_CHECKING:
    from nndeploy.partitioner.cost import CostModel
    from nndeploy.targets.measure.plan_check import PlanMeasurement


# A plan measured better than a better-predicted one by less than this fraction is not preferred to it:
# on a shared host repeated timings of the same stage differ by a few percent.
NOISE = 0.03


@dataclass(frozen=True)
class PlanCheck:
    """The candidates (best predicted first), their measurements, the index of the best measured
    (`fastest`) and of the one kept (`best`: the best-predicted plan within NOISE of the fastest)."""

    plans: tuple[Plan, ...]
    measurements: tuple[PlanMeasurement, ...]
    best: int
    fastest: int

    @property
    def chosen(self) -> Plan:
        """The best measured plan."""
        return self.plans[self.best]


def check_plans(
    model: Path,
    graph: Graph,
    cluster: Cluster,
    objective: str,
    cost_model: CostModel | None,
    k: int,
    fallback: Mapping[str, FallbackNode] | None = None,
) -> PlanCheck:
    """Find up to `k` candidate plans, cut each into stage models of `model` (as `graph` was prepared),
    time them on this host and pick the best by `objective`'s measured figure."""
    from nndeploy.graph import load_prepared_model
    from nndeploy.partitioner.candidates import candidate_plans
    from nndeploy.partitioner.split import split
    from nndeploy.targets.measure.plan_check import measure_plans, refuse_unrunnable

    plans = candidate_plans(graph, cluster, objective, cost_model, k, fallback)
    refuse_unrunnable(plans)
    prepared = load_prepared_model(model, graph.input_shapes, None)
    stage_models = [split(prepared, the_plan) for the_plan in plans]
    measurements = measure_plans(plans, stage_models)
    keys = [measured_key(m, objective) for m in measurements]
    fastest = min(range(len(plans)), key=lambda i: (keys[i], i))
    best = next(i for i, key in enumerate(keys) if key[0] <= keys[fastest][0] * (1 + NOISE))
    return PlanCheck(tuple(plans), tuple(measurements), best, fastest)


def measured_key(measurement: PlanMeasurement, objective: str) -> tuple[float, ...]:
    """What `objective` minimises, on measured figures: latency; or the bottleneck, then latency."""
    if objective == "latency":
        return (measurement.latency_ms,)
    return (measurement.bottleneck_ms, measurement.latency_ms)


def checked_plan(
    model: Path,
    graph: Graph,
    cluster: Cluster,
    objective: str,
    cost_model: CostModel | None,
    k: int,
    fallback: Mapping[str, FallbackNode] | None = None,
) -> Plan:
    """`check_plans`, printed as a table; returns the best measured plan."""
    out.print(
        f"timing the top {k} candidate plan(s) (fewer if fewer exist) on this host ...", highlight=False
    )
    result = check_plans(model, graph, cluster, objective, cost_model, k, fallback)
    print_check(result, objective)
    return result.chosen


def stages_text(the_plan: Plan) -> str:
    """The stages as device:node-count, in pipeline order."""
    return " -> ".join(f"{stage.device}:{len(stage.nodes)}" for stage in the_plan.stages)


def _error(predicted: float, measured: float) -> str:
    return f"{100 * (predicted - measured) / measured:+.0f}%" if measured > 0 else "-"


def print_check(result: PlanCheck, objective: str) -> None:
    """Predicted and measured figures side by side, then which plan is kept and why."""
    table = Table(title=f"top {len(result.plans)} candidate plans ({objective}): predicted vs measured")
    headers = (
        "rank",
        "stages (device:ops)",
        "stage ms pred / meas",
        "latency ms pred",
        "latency ms meas",
        "latency error",
        "throughput/s pred",
        "throughput/s meas",
        "throughput error",
        "kept",
    )
    for header in headers:
        table.add_column(header, justify="left" if header.startswith(("stages", "kept")) else "right")
    for rank, (the_plan, measured) in enumerate(zip(result.plans, result.measurements, strict=True), 1):
        stage_ms = ", ".join(
            f"{stage.compute_ms:.2f}/{ms:.2f}"
            for stage, ms in zip(the_plan.stages, measured.stage_ms, strict=True)
        )
        table.add_row(
            str(rank),
            stages_text(the_plan),
            stage_ms,
            f"{the_plan.latency_ms:.3f}",
            f"{measured.latency_ms:.3f}",
            _error(the_plan.latency_ms, measured.latency_ms),
            f"{the_plan.throughput_per_s:,.1f}",
            f"{measured.throughput_per_s:,.1f}",
            _error(the_plan.throughput_per_s, measured.throughput_per_s),
            "*" if rank - 1 == result.best else "",
        )
    out.print(table)
    threads = sorted({t for m in result.measurements for t in m.threads})
    out.print(
        "measured: each stage model timed with onnxruntime on this host "
        f"({'/'.join(map(str, threads))} thread(s): the device's cores, at most this host's CPUs; "
        "lower quartile of repeated runs); links between devices cannot be measured on one host, so the "
        "measured figures add the plan's predicted transfer times",
        highlight=False,
    )
    figure = "latency" if objective == "latency" else "throughput"
    if result.fastest != result.best:
        fast, kept = (
            measured_key(result.measurements[i], objective)[0] for i in (result.fastest, result.best)
        )
        out.print(
            f"rank {result.fastest + 1} measured only {(kept - fast) / fast:.1%} faster than rank "
            f"{result.best + 1}, under the {NOISE:.0%} timing noise of a shared host: rank {result.best + 1} "
            "counts as the measured best",
            highlight=False,
        )
    if result.best == 0:
        out.print(f"the measured best is the predicted best (rank 1, by measured {figure}): keeping it")
    else:
        out.print(
            f"the measured best differs from the predicted best: keeping rank {result.best + 1} "
            f"({stages_text(result.chosen)}) over rank 1 ({stages_text(result.plans[0])}), "
            f"by measured {figure}",
            highlight=False,
        )
