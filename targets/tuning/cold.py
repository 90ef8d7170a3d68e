"""Measuring a tuning candidate as it runs inside a stage whose weights do not fit the CPU's cache.

MetaSchedule times a kernel by running it back to back, so its weights sit in the cache. Inside a
whole-network run they do not when the stage's weights exceed the last-level cache: each kernel's
weights were last read one inference ago and have been evicted by the others since. Measured on
resnet50 (about 100 MB of weights, 32 MB of L3): the stage-4 convolutions ran 1.2-1.4x slower in the
network than in MetaSchedule's timing, and near-equal candidates differed up to 2.3x once their
weights were cold. Such stages are tuned with the weights evicted before every timed run and the
activations warm, as the previous kernel leaves them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import onnx

from nndeploy.errors import BuildError

# The eviction buffer is this many times the last-level cache: LRU-like replacement does not evict
# every line with a single pass of exactly the cache's size.
EVICTION_FACTOR = 2
MIN_EVICTION_BYTES = 8 << 20
COLD_REPEATS = 15  # timed runs per candidate; the median is kept (single runs are noisy)
SEED_RECORDS = 8  # warm records re-timed cold before a workload's cold search starts
CACHE_SYSFS = Path("/sys/devices/system/cpu/cpu0/cache")
LLC_ENV = "NNDEPLOY_LLC_BYTES"

_eviction_buffer: Any = None


def last_level_cache_bytes() -> int | None:
    """Size of this machine's last-level CPU cache: NNDEPLOY_LLC_BYTES if set (for example where a
    container's view of the OS is wrong), else what the OS says, else None."""
    override = os.environ.get(LLC_ENV)
    if override is not None:
        try:
            return _parse_size(override.strip())
        except ValueError:
            raise BuildError(
                f"{LLC_ENV}={override!r} is not a size: give bytes, e.g. 33554432 or 32M"
            ) from None
    return _last_level_cache_bytes(CACHE_SYSFS)


@lru_cache(maxsize=4)
def _last_level_cache_bytes(folder: Path) -> int | None:
    best: tuple[int, int] | None = None
    for index in sorted(folder.glob("index*")):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            size = _parse_size((index / "size").read_text().strip())
        except (OSError, ValueError):
            continue
        if kind != "Instruction" and (best is None or level > best[0]):
            best = (level, size)
    return best[1] if best else None


def _parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text and text[-1].upper() in units:
        return int(text[:-1]) * units[text[-1].upper()]
    return int(text)


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the model's initializers (its weights), external data included."""
    total = 0
    for tensor in model.graph.initializer:
        count = 1
        for dim in tensor.dims:
            count *= dim
        element = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        total += count * element
    return total


def weights_cold(model: onnx.ModelProto) -> bool:
    """Whether the stage's weights exceed this machine's last-level cache (so its kernels are tuned
    with cold weights); False where the cache size is unknown."""
    cache = last_level_cache_bytes()
    return cache is not None and weight_bytes(model) > cache


def run_evaluator_cold_weights(
    weight_args: Sequence[int], rt_mod: Any, device: Any, evaluator_config: Any, repeated_args: Any
) -> list[float]:
    """MetaSchedule runner evaluator (runs in its worker process): each timed run starts with the
    cache evicted and every argument but the weights read back in; the median of
    `evaluator_config.repeat` runs per argument set, in seconds."""
    import numpy as np

    global _eviction_buffer
    if _eviction_buffer is None:
        size = max(MIN_EVICTION_BYTES, EVICTION_FACTOR * (last_level_cache_bytes() or 0))
        _eviction_buffer = np.ones(size // 4, dtype=np.float32)
    kernel = rt_mod[rt_mod.entry_name]
    medians = []
    for args in repeated_args:
        kernel(*args)  # warm-up: code, page tables, the thread pool
        warm = [arg for position, arg in enumerate(args) if position not in weight_args]
        costs = []
        for _ in range(max(1, evaluator_config.repeat)):
            # Written, not read: the cache is left holding dirty lines of other data, as after the
            # kernels that ran before this one.
            _eviction_buffer += 1.0
            for arg in warm:
                arg.numpy()
            started = time.perf_counter()
            kernel(*args)
            device.sync()
            costs.append(time.perf_counter() - started)
        medians.append(float(np.median(costs)))
    return medians


def weight_arguments(function_module: Any) -> tuple[int, ...]:
    """Positions of a tuning task's weights among its kernel's arguments (TVM's layout-free buffers)."""
    function = function_module["main"]
    marked = function.attrs.get("layout_free_buffers") if function.attrs is not None else None
    return tuple(int(i) for i in marked) if marked else ()


def runner(weight_args: tuple[int, ...]) -> Any:
    """A MetaSchedule local runner that times candidates with these arguments' data evicted."""
    from functools import partial

    from tvm.s_tir import meta_schedule as ms

    return ms.runner.LocalRunner(
        evaluator_config=ms.runner.EvaluatorConfig(number=1, repeat=COLD_REPEATS, min_repeat_ms=0),
        f_run_evaluator=partial(run_evaluator_cold_weights, weight_args),
    )


def seed_from_warm(
    function_module: Any, warm: Any, cold: Any, builder: Any, runner: Any, target: Any
) -> tuple[int, float | None] | None:
    """Time the warm database's best SEED_RECORDS schedules of a workload with cold weights and record
    them in the cold database, so its search starts from them and never ends worse than they run in the
    network. Returns (records measured, best ms), or None when the warm database has none."""
    from nndeploy.targets.tuning.metaschedule import measure_traces

    if not warm.has_workload(function_module):
        return None
    records = warm.get_top_k(warm.commit_workload(function_module), SEED_RECORDS)
    measured = measure_traces(function_module, [r.trace for r in records], cold, builder, runner, target)
    return measured if measured[0] else None
