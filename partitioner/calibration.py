"""Cost models fitted to measurements (`nndeploy profile`): per device, per op type, milliseconds as a
non-negative combination of the node's cost features, with a measured-peak roofline for the rest.

Pure numpy. A `Calibration` is what calibration.json holds: one `DeviceCalibration` per device profile
name. `CalibratedCostModel` is a drop-in `CostModel`: devices whose profile has a calibration use it,
every other device the fallback model (by default the spec-sheet roofline).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nndeploy.errors import CalibrationError
from nndeploy.partitioner.cost import DEFAULT_HOP, CostModel, RooflineCostModel, supports
from nndeploy.types import DTYPE_BYTES, Device, Graph, HopCost, Link, Node, OpSample

SCHEMA_VERSION = "1.0"
CALIBRATION_FILE = "calibration.json"
MIN_OP_SAMPLES = 4  # a cost class with fewer samples uses its op type's fit, else the device's fallback
# A Conv doing fewer multiply-accumulates than this per output element (3x3 depthwise: 9, grouped 1x1
# convolutions alike) is its own cost class: it runs 10-40x below a dense convolution's FLOP rate.
DEPTHWISE_MACS = 16
# Per-op features, in the units the coefficients are stored in: ms per GFLOP, per GB moved (read +
# written), per GB of weights, per GB of output, and a fixed ms per node.
FEATURES = ("ms_per_gflop", "ms_per_gb", "ms_per_gb_weights", "ms_per_gb_out", "fixed_ms")


def cost_class(op_type: str, flops: float, out_bytes: float, dtype: str = "float32") -> str:
    """The key a node's fit is stored under: its op type, or 'Conv:depthwise' for convolutions with
    fewer than DEPTHWISE_MACS multiply-accumulates per output element."""
    if op_type in ("Conv", "ConvTranspose") and out_bytes > 0:
        outputs = out_bytes / DTYPE_BYTES.get(dtype, 4)
        if flops < 2 * DEPTHWISE_MACS * outputs:
            return f"{op_type}:depthwise"
    return op_type


def features(flops: float, nbytes: float, param_bytes: float, out_bytes: float) -> np.ndarray:
    """The feature vector, in FEATURES' order and units."""
    return np.array([flops / 1e9, nbytes / 1e9, param_bytes / 1e9, out_bytes / 1e9, 1.0])


def node_features(node: Node) -> np.ndarray:
    """`features` of a Graph node."""
    return features(node.flops, node.bytes_read + node.bytes_written, node.param_bytes, node.out_bytes)


@dataclass(frozen=True)
class OpFit:
    """ms = coefficients . features for one op type; `fit_error` is the median relative error on its
    `samples` training samples."""

    coefficients: tuple[float, ...]
    samples: int
    fit_error: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Milliseconds for feature rows `x`."""
        return np.asarray(x) @ np.asarray(self.coefficients)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: the coefficients by name."""
        return {
            **dict(zip(FEATURES, self.coefficients, strict=True)),
            "samples": self.samples,
            "fit_error": self.fit_error,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OpFit:
        """Inverse of `to_dict`."""
        return cls(tuple(float(data[k]) for k in FEATURES), int(data["samples"]), float(data["fit_error"]))


@dataclass(frozen=True)
class FallbackFit:
    """For op types without their own fit: ms = scale x measured-peak roofline + fixed_ms."""

    scale: float
    fixed_ms: float
    samples: int
    fit_error: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {k: getattr(self, k) for k in ("scale", "fixed_ms", "samples", "fit_error")}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FallbackFit:
        """Inverse of `to_dict`."""
        return cls(
            float(data["scale"]), float(data["fixed_ms"]), int(data["samples"]), float(data["fit_error"])
        )


@dataclass(frozen=True)
class DeviceCalibration:
    """Everything measured and fitted for one device profile on one host."""

    profile: str
    peak_gflops: float
    mem_bw_gbytes_s: float
    ops: dict[str, OpFit]
    fallback: FallbackFit
    samples: int
    fit_error: float
    threads: int = 1
    host: dict[str, str] = field(default_factory=dict)
    measured_at: str = ""
    spec: dict[str, float] = field(default_factory=dict)

    def roofline_ms(self, flops: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
        """max(FLOPs / measured peak, bytes / measured bandwidth) in ms."""
        return np.maximum(flops / (self.peak_gflops * 1e9), nbytes / (self.mem_bw_gbytes_s * 1e9)) * 1e3

    def predict(self, key: str, x: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """Milliseconds for feature rows `x` of nodes of cost class `key` (see `cost_class`): its own
        fit, else its op type's, else the fallback (`scale` slows the fallback's compute term, for
        dtypes slower than float32)."""
        x = np.atleast_2d(x)
        fit = self.ops.get(key) or self.ops.get(key.split(":")[0])
        if fit is not None:
            return fit.predict(x)
        roof = self.roofline_ms(x[:, 0] * 1e9 * scale, x[:, 1] * 1e9)
        return self.fallback.scale * roof + self.fallback.fixed_ms

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "host": dict(self.host),
            "threads": self.threads,
            "measured_at": self.measured_at,
            "peak_gflops": {"float32": self.peak_gflops},
            "mem_bw_gbytes_s": self.mem_bw_gbytes_s,
            "spec": dict(self.spec),
            "samples": self.samples,
            "fit_error": self.fit_error,
            "fallback": self.fallback.to_dict(),
            "ops": {op: fit.to_dict() for op, fit in sorted(self.ops.items())},
        }

    @classmethod
    def from_dict(cls, profile: str, data: Mapping[str, Any]) -> DeviceCalibration:
        """Inverse of `to_dict`."""
        return cls(
            profile=profile,
            peak_gflops=float(data["peak_gflops"]["float32"]),
            mem_bw_gbytes_s=float(data["mem_bw_gbytes_s"]),
            ops={op: OpFit.from_dict(fit) for op, fit in data["ops"].items()},
            fallback=FallbackFit.from_dict(data["fallback"]),
            samples=int(data["samples"]),
            fit_error=float(data["fit_error"]),
            threads=int(data.get("threads", 1)),
            host={str(k): str(v) for k, v in data.get("host", {}).items()},
            measured_at=str(data.get("measured_at", "")),
            spec={str(k): float(v) for k, v in data.get("spec", {}).items()},
        )


@dataclass(frozen=True)
class Calibration:
    """calibration.json: a DeviceCalibration per device profile name, and the data plane's measured cost
    of a hop between stages (None: the default)."""

    devices: dict[str, DeviceCalibration]
    hop: HopCost | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        data: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "devices": {name: dev.to_dict() for name, dev in sorted(self.devices.items())},
        }
        if self.hop is not None:
            data["hop"] = self.hop.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = CALIBRATION_FILE) -> Calibration:
        """Inverse of `to_dict`; CalibrationError naming `where` when the data is not a calibration."""
        if not isinstance(data, dict) or "devices" not in data:
            raise CalibrationError(f"{where}: not a calibration file (no 'devices'); run nndeploy profile")
        version = str(data.get("schema_version", ""))
        if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise CalibrationError(
                f"{where}: schema_version '{version}' is not {SCHEMA_VERSION}; run nndeploy profile again"
            )
        try:
            hop = HopCost.from_dict(data["hop"]) if "hop" in data else None
            devices = {name: DeviceCalibration.from_dict(name, d) for name, d in data["devices"].items()}
            return cls(devices, hop)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CalibrationError(
                f"{where}: malformed calibration ({type(exc).__name__}: {exc}); run nndeploy profile again"
            ) from None

    def write(self, path: Path) -> Path:
        """Write as JSON to `path` (a file, or a folder to hold calibration.json)."""
        target = path / CALIBRATION_FILE if path.is_dir() else path
        target.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return target

    @classmethod
    def read(cls, path: Path) -> Calibration:
        """Read calibration.json (`path` is the file or its folder)."""
        target = path / CALIBRATION_FILE if path.is_dir() else path
        try:
            text = target.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CalibrationError(f"{target}: not found; run nndeploy profile to make it") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CalibrationError(f"{target}: cannot read it ({exc})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"{target}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        return cls.from_dict(data, str(target))

    def merged(self, other: Calibration) -> Calibration:
        """This calibration with `other`'s devices added (other wins on a name clash, and for the hop)."""
        return Calibration({**self.devices, **other.devices}, other.hop or self.hop)


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin ||a x - b|| subject to x >= 0, exactly, for a few columns (every support set is tried)."""
    columns = a.shape[1]
    best, best_x = np.inf, np.zeros(columns)
    for size in range(1, columns + 1):
        for subset in itertools.combinations(range(columns), size):
            cols = list(subset)
            x, *_ = np.linalg.lstsq(a[:, cols], b, rcond=None)
            if np.any(x < 0):
                continue
            residual = float(np.sum((a[:, cols] @ x - b) ** 2))
            if residual < best:
                best, best_x = residual, np.zeros(columns)
                best_x[cols] = x
    return best_x


def _weights(ms: np.ndarray) -> np.ndarray:
    """Row weights for the least squares: 1/ms, so that it minimises relative errors (small and large
    nodes count alike; measured on held-out stages this beat absolute and 1/sqrt weighting)."""
    return 1.0 / np.maximum(ms, 1e-4)


def _median_rel_error(predicted: np.ndarray, measured: np.ndarray) -> float:
    return float(np.median(np.abs(predicted - measured) / measured)) if len(measured) else 0.0


def fit_op(x: np.ndarray, ms: np.ndarray, columns: Sequence[int] | None = None) -> OpFit:
    """Non-negative least squares of ms on the feature rows `x` (only `columns` of them, default all),
    weighted by 1/ms (relative error)."""
    cols = list(range(x.shape[1])) if columns is None else list(columns)
    w = _weights(ms)
    coefficients = np.zeros(x.shape[1])
    coefficients[cols] = nnls(x[:, cols] * w[:, None], ms * w)
    return OpFit(tuple(float(c) for c in coefficients), len(ms), _median_rel_error(x @ coefficients, ms))


def fit_columns(key: str) -> tuple[int, ...]:
    """Which features a cost class is fitted on: FLOPs, bytes and a fixed time for every class, plus
    weights and output bytes where they carry cost of their own (weight packing; per-output work)."""
    return tuple(range(len(FEATURES))) if key.split(":")[0] in _CONTRACTIONS else _BASIC_COLUMNS


_CONTRACTIONS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
_BASIC_COLUMNS = (0, 1, 4)


def fit_device(
    samples: Iterable[OpSample],
    peak_gflops: float,
    mem_bw_gbytes_s: float,
    profile: str,
    min_op_samples: int = MIN_OP_SAMPLES,
    **info: Any,
) -> DeviceCalibration:
    """Fit one device: an OpFit per cost class (`cost_class`) and per op type with at least
    `min_op_samples` samples, and the fallback (scale x measured-peak roofline + fixed ms) over all
    samples. `info` fills threads, host, measured_at and spec."""
    rows = list(samples)
    if not rows:
        raise CalibrationError(f"no samples to fit a calibration for '{profile}'")
    x = np.stack([features(s.flops, s.bytes, s.param_bytes, s.out_bytes) for s in rows])
    ms = np.array([s.ms for s in rows], dtype=float)
    ops = np.array([s.op_type for s in rows])
    keys = np.array([cost_class(s.op_type, s.flops, s.out_bytes, s.dtype) for s in rows])
    draft = DeviceCalibration(
        profile, peak_gflops, mem_bw_gbytes_s, {}, FallbackFit(1.0, 0.0, 0, 0.0), 0, 0.0
    )
    roof = draft.roofline_ms(x[:, 0] * 1e9, x[:, 1] * 1e9)
    w = _weights(ms)
    scale, fixed = nnls(np.stack([roof, np.ones_like(roof)], axis=1) * w[:, None], ms * w)
    fallback = FallbackFit(float(scale), float(fixed), len(ms), _median_rel_error(scale * roof + fixed, ms))
    fits: dict[str, OpFit] = {}
    for names in (ops, keys):
        for key in sorted(set(names.tolist())):
            chosen = names == key
            if key not in fits and int(chosen.sum()) >= min_op_samples:
                fits[str(key)] = fit_op(x[chosen], ms[chosen], fit_columns(str(key)))
    fitted = DeviceCalibration(profile, peak_gflops, mem_bw_gbytes_s, fits, fallback, len(ms), 0.0, **info)
    predicted = np.array([fitted.predict(k, row)[0] for k, row in zip(keys, x, strict=True)])
    return dataclasses.replace(fitted, fit_error=_median_rel_error(predicted, ms))


class CalibratedCostModel:
    """A CostModel from measurements: devices whose profile is in `calibration` get the fitted per-op
    times; the others, and every transfer, use `fallback` (by default the roofline with the measured
    hop cost, where the calibration has one)."""

    def __init__(self, calibration: Calibration, fallback: CostModel | None = None) -> None:
        self.calibration = calibration
        self.fallback = fallback or RooflineCostModel(calibration.hop or DEFAULT_HOP)

    def calibrated(self, device: Device) -> bool:
        """Whether `device` uses measured costs."""
        return device.profile in self.calibration.devices

    def node_ms(self, graph: Graph, device: Device) -> np.ndarray:
        """Predicted milliseconds of every node of `graph` on `device` (inf where it cannot run)."""
        fitted = self.calibration.devices.get(device.profile)
        if fitted is None:
            return self.fallback.node_ms(graph, device)
        times = np.empty(len(graph.nodes))
        fp32 = device.peak_gflops_for("float32")
        for index, node in enumerate(graph.nodes):
            if not supports(device, node.op_type, node.dtype):
                times[index] = np.inf
                continue
            slower = fp32 / device.peak_gflops_for(node.dtype) if node.dtype != "float32" else 1.0
            key = cost_class(node.op_type, node.flops, node.out_bytes, node.dtype)
            times[index] = float(fitted.predict(key, node_features(node), slower)[0])
        return np.maximum(times, 0.0)

    def transfer_ms(self, nbytes: float, link: Link | None) -> float:
        """The fallback's (links are described, the hop's own cost measured)."""
        return self.fallback.transfer_ms(nbytes, link)


def stage_ms(model: CostModel, graph: Graph, device: Device, nodes: Sequence[str]) -> float:
    """Predicted compute milliseconds of the nodes named `nodes` of `graph` on `device`."""
    times = model.node_ms(graph, device)
    wanted = set(nodes)
    return float(sum(t for node, t in zip(graph.nodes, times, strict=True) if node.name in wanted))
