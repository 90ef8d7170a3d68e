"""The core value types every package shares: tensors, devices, clusters, plans and artifacts.

Plain frozen dataclasses with a JSON round trip (`to_dict` / `from_dict`) and no behaviour beyond small
derived properties. Nothing here imports another part of the project.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

DTYPE_BYTES: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8e4m3fn": 1,
    "float8e5m2": 1,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint64": 8,
    "uint32": 4,
    "uint16": 2,
    "uint8": 1,
    "int4": 1,
    "uint4": 1,
    "bool": 1,
    "complex64": 8,
    "complex128": 16,
    "string": 8,
}

DEVICE_KINDS = ("cpu", "gpu", "edge")
OBJECTIVES = ("throughput", "latency")
PLAN_SCHEMA_VERSION = "1.0"


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor of a fixed shape and dtype (dtype as a numpy-style name, e.g. 'float32')."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Size in bytes of the dense tensor."""
        return self.numel * DTYPE_BYTES.get(self.dtype, 4)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (includes the derived byte count for readers of plan.json)."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "bytes": self.nbytes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        """Inverse of `to_dict`."""
        return cls(name=data["name"], shape=tuple(int(d) for d in data["shape"]), dtype=data["dtype"])


@dataclass(frozen=True)
class Node:
    """One operator of an analysed model, with the cost features the planner needs.

    `inputs` are activation tensors (graph inputs or other nodes' outputs); constant weights are listed in
    `params` instead. `flops` counts multiply and add separately (a multiply-accumulate is 2 FLOPs).
    `estimated` marks an op whose cost is a conservative guess (an op the analysis does not know)."""

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: tuple[str, ...]
    flops: float
    bytes_read: int
    bytes_written: int
    param_bytes: int
    out_bytes: int
    dtype: str = "float32"
    estimated: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class Graph:
    """An analysed ONNX model: nodes in a topological order with per-node costs, and every activation
    tensor's static shape. Node names are unique and stable (the analysis names unnamed nodes).

    `tensors` holds graph inputs and node outputs (not weights); `param_bytes` maps each weight
    (initializer) to its size. `inputs`/`outputs` are the model's real inputs and outputs.
    `non_tensors` names the values inside the model that are sequences, optionals or maps: stages
    exchange tensors only, so no stage boundary may carry one. `data_dependent` names the tensors whose
    shape depends on the input data (NonZero's output, a Reshape to computed sizes) or could not be
    measured: stages exchange fixed-shape tensors, so no boundary and no graph output may be one."""

    model_path: str
    model_sha256: str
    nodes: tuple[Node, ...]
    tensors: dict[str, TensorSpec]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    param_bytes: dict[str, int]
    input_shapes: dict[str, tuple[int, ...]]
    batch: int = 1
    warnings: tuple[str, ...] = ()
    non_tensors: frozenset[str] = frozenset()
    data_dependent: frozenset[str] = frozenset()

    @property
    def total_flops(self) -> float:
        """Sum of all nodes' FLOPs."""
        return float(sum(n.flops for n in self.nodes))

    @property
    def total_param_bytes(self) -> int:
        """Bytes of all weights."""
        return int(sum(self.param_bytes.values()))


@dataclass(frozen=True)
class Device:
    """One device of a cluster: a named instance of a capability profile, with everything the planner
    and the compiler need to know about it."""

    name: str
    profile: str
    kind: str
    arch: str
    tvm_target: dict[str, Any]
    peak_gflops: dict[str, float]
    mem_bw_gbytes_s: float
    mem_bytes: int
    launch_overhead_us: float
    ops: frozenset[str] | None = None
    dtypes: frozenset[str] = frozenset({"float32"})
    cross_compile: dict[str, Any] | None = None
    host: str | None = None
    node_labels: dict[str, str] = field(default_factory=dict)

    def supports_dtype(self, dtype: str) -> bool:
        """Whether the device computes in `dtype` (integer index types always pass)."""
        return dtype in self.dtypes or dtype in ("int64", "int32", "bool")

    def peak_gflops_for(self, dtype: str) -> float:
        """Peak GFLOP/s for `dtype`, falling back to float32 when the profile gives no figure."""
        return self.peak_gflops.get(dtype, self.peak_gflops.get("float32", 1.0))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = asdict(self)
        data["ops"] = sorted(self.ops) if self.ops is not None else None
        data["dtypes"] = sorted(self.dtypes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Device:
        """Inverse of `to_dict`."""
        kwargs = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        kwargs["ops"] = frozenset(data["ops"]) if data.get("ops") is not None else None
        kwargs["dtypes"] = frozenset(data.get("dtypes", ["float32"]))
        kwargs["peak_gflops"] = {k: float(v) for k, v in data["peak_gflops"].items()}
        kwargs["mem_bytes"] = int(data["mem_bytes"])
        kwargs["node_labels"] = dict(data.get("node_labels") or {})
        return cls(**kwargs)


@dataclass(frozen=True)
class Link:
    """A network (or bus) link between two devices; symmetric."""

    a: str
    b: str
    gbps: float
    latency_ms: float

    def transfer_ms(self, nbytes: int) -> float:
        """Time to move `nbytes` over this link: latency plus size over bandwidth."""
        return self.latency_ms + nbytes * 8 / (self.gbps * 1e9) * 1e3

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Link:
        """Inverse of `to_dict`."""
        return cls(a=data["a"], b=data["b"], gbps=float(data["gbps"]), latency_ms=float(data["latency_ms"]))


@dataclass(frozen=True)
class HopCost:
    """What the data plane spends on one hop between stages, beyond the link: milliseconds per message
    and per MiB (serialising, copying, the gRPC stream)."""

    fixed_ms: float
    ms_per_mib: float

    def ms(self, nbytes: float) -> float:
        """The hop's own time for a message of `nbytes` of tensors."""
        return self.fixed_ms + self.ms_per_mib * nbytes / (1 << 20)

    def to_dict(self) -> dict[str, float]:
        """JSON form."""
        return {"fixed_ms": self.fixed_ms, "ms_per_mib": self.ms_per_mib}

    @classmethod
    def from_dict(cls, data: Any) -> HopCost:
        """Inverse of `to_dict` (ValueError for anything else)."""
        if not isinstance(data, dict):
            raise ValueError("hop: expected {fixed_ms, ms_per_mib}")
        fixed, per_mib = float(data["fixed_ms"]), float(data["ms_per_mib"])
        if fixed < 0 or per_mib < 0:
            raise ValueError("hop: fixed_ms and ms_per_mib must be >= 0")
        return cls(fixed, per_mib)


@dataclass(frozen=True)
class Cluster:
    """Devices, the links between them (a default for unlisted pairs), and where requests enter (`source`)
    and results leave (`sink`), both device names."""

    devices: tuple[Device, ...]
    links: tuple[Link, ...]
    default_link: Link
    source: str
    sink: str
    name: str = "cluster"
    # What the data plane spends on a hop between stages, as cluster.yaml states it (None: the cost
    # model's own, measured by `nndeploy profile` or its default).
    hop: HopCost | None = None
    # Whether cluster.yaml gave `default_link` itself; when not, a pair it covers is a guess the planner
    # warns about (`guessed`). Not part of the JSON form: a plan's cluster is what was planned with.
    default_link_given: bool = field(default=True, compare=False)

    def device(self, name: str) -> Device:
        """The device called `name` (KeyError if absent)."""
        for device in self.devices:
            if device.name == name:
                return device
        raise KeyError(name)

    def link(self, a: str, b: str) -> Link | None:
        """The link between devices `a` and `b`; None when they are the same device (no transfer)."""
        if a == b:
            return None
        for link in self.links:
            if {link.a, link.b} == {a, b}:
                return link
        return Link(a=a, b=b, gbps=self.default_link.gbps, latency_ms=self.default_link.latency_ms)

    def guessed(self, a: str, b: str) -> bool:
        """Whether the link between `a` and `b` is the built-in default nobody stated (no `links` entry,
        no shared host, no `default_link` in the file)."""
        if a == b or self.default_link_given:
            return False
        return not any({link.a, link.b} == {a, b} for link in self.links)

    def transfer_ms(self, a: str, b: str, nbytes: int) -> float:
        """Time to move `nbytes` from device `a` to device `b` (zero on the same device)."""
        link = self.link(a, b)
        return 0.0 if link is None else link.transfer_ms(nbytes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data: dict[str, Any] = {
            "name": self.name,
            "devices": [d.to_dict() for d in self.devices],
            "links": [link.to_dict() for link in self.links],
            "default_link": {"gbps": self.default_link.gbps, "latency_ms": self.default_link.latency_ms},
            "source": self.source,
            "sink": self.sink,
        }
        if self.hop is not None:
            data["hop"] = self.hop.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cluster:
        """Inverse of `to_dict`."""
        default = data["default_link"]
        return cls(
            devices=tuple(Device.from_dict(d) for d in data["devices"]),
            links=tuple(Link.from_dict(x) for x in data["links"]),
            default_link=Link(
                a="*", b="*", gbps=float(default["gbps"]), latency_ms=float(default["latency_ms"])
            ),
            source=data["source"],
            sink=data["sink"],
            name=data.get("name", "cluster"),
            hop=HopCost.from_dict(data["hop"]) if "hop" in data else None,
        )


@dataclass(frozen=True)
class FallbackNode:
    """A node its stage runs on onnxruntime instead of TVM-compiled code, and why."""

    node: str
    op_type: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {"node": self.node, "op_type": self.op_type, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FallbackNode:
        """Inverse of `to_dict`."""
        return cls(str(data["node"]), str(data["op_type"]), str(data["reason"]))


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: a contiguous run of graph nodes on one device.

    `inputs` are the tensors the stage receives and `outputs` the tensors it sends on; a tensor in both
    is forwarded unchanged (a skip connection or a graph output produced early). `transfer_ms` is the
    predicted time to send `outputs` to the next stage (for the last stage: to the cluster's sink).
    `fallback` lists the nodes TVM cannot compile (or computes wrongly): the stage runs them on
    onnxruntime, each maximal run of them as one region between its TVM-compiled parts."""

    index: int
    device: str
    nodes: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    compute_ms: float
    transfer_ms: float
    mem_bytes: int
    param_bytes: int = 0
    op_types: tuple[str, ...] = ()
    fallback: tuple[FallbackNode, ...] = ()

    @property
    def forwarded(self) -> tuple[str, ...]:
        """Names of tensors passed through this stage unchanged."""
        received = {t.name for t in self.inputs}
        return tuple(t.name for t in self.outputs if t.name in received)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "index": self.index,
            "device": self.device,
            "nodes": list(self.nodes),
            "op_types": list(self.op_types),
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "compute_ms": self.compute_ms,
            "transfer_ms": self.transfer_ms,
            "mem_bytes": self.mem_bytes,
            "param_bytes": self.param_bytes,
            "fallback": [f.to_dict() for f in self.fallback],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stage:
        """Inverse of `to_dict`."""
        return cls(
            index=int(data["index"]),
            device=data["device"],
            nodes=tuple(data["nodes"]),
            inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
            compute_ms=float(data["compute_ms"]),
            transfer_ms=float(data["transfer_ms"]),
            mem_bytes=int(data["mem_bytes"]),
            param_bytes=int(data.get("param_bytes", 0)),
            op_types=tuple(data.get("op_types", ())),
            fallback=tuple(FallbackNode.from_dict(f) for f in data.get("fallback", ())),
        )


@dataclass(frozen=True)
class Plan:
    """A model split into stages over a cluster, with the planner's predictions.

    `latency_ms` is the predicted time of one request from the source device to the sink device;
    `throughput_per_s` the predicted steady-state samples per second (batch x requests) when the
    pipeline is kept full. `input_transfer_ms` is the time to bring the inputs from the source to stage 0."""

    model_path: str
    model_sha256: str
    objective: str
    stages: tuple[Stage, ...]
    latency_ms: float
    throughput_per_s: float
    input_shapes: dict[str, tuple[int, ...]]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    cluster: Cluster
    batch: int = 1
    input_transfer_ms: float = 0.0
    bottleneck: str = ""
    topological_order: str = ""
    planner_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as written to plan.json."""
        return {
            "schema_version": PLAN_SCHEMA_VERSION,
            "model_path": self.model_path,
            "model_sha256": self.model_sha256,
            "objective": self.objective,
            "batch": self.batch,
            "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "cluster": self.cluster.to_dict(),
            "stages": [s.to_dict() for s in self.stages],
            "input_transfer_ms": self.input_transfer_ms,
            "latency_ms": self.latency_ms,
            "throughput_per_s": self.throughput_per_s,
            "bottleneck": self.bottleneck,
            "topological_order": self.topological_order,
            "planner_seconds": self.planner_seconds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """Inverse of `to_dict`."""
        return cls(
            model_path=data["model_path"],
            model_sha256=data["model_sha256"],
            objective=data["objective"],
            stages=tuple(Stage.from_dict(s) for s in data["stages"]),
            latency_ms=float(data["latency_ms"]),
            throughput_per_s=float(data["throughput_per_s"]),
            input_shapes={k: tuple(int(d) for d in v) for k, v in data["input_shapes"].items()},
            inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
            cluster=Cluster.from_dict(data["cluster"]),
            batch=int(data.get("batch", 1)),
            input_transfer_ms=float(data.get("input_transfer_ms", 0.0)),
            bottleneck=data.get("bottleneck", ""),
            topological_order=data.get("topological_order", ""),
            planner_seconds=float(data.get("planner_seconds", 0.0)),
        )


@dataclass(frozen=True)
class Artifact:
    """A compiled stage: the file, its checksum and everything needed to load and check it.

    A stage with onnxruntime regions is built as `parts`, run in order on one tensor dict: TVM libraries
    and onnxruntime models (those flagged `fallback`); its own `path` is then the whole stage model."""

    stage: int
    target: dict[str, Any]
    path: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    tvm_version: str
    options: dict[str, Any] = field(default_factory=dict)
    fallback: str | None = None
    parts: tuple[Artifact, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = asdict(self)
        data["inputs"] = [t.to_dict() for t in self.inputs]
        data["outputs"] = [t.to_dict() for t in self.outputs]
        data["parts"] = [part.to_dict() for part in self.parts]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Artifact:
        """Inverse of `to_dict`."""
        kwargs = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        kwargs["inputs"] = tuple(TensorSpec.from_dict(t) for t in data["inputs"])
        kwargs["outputs"] = tuple(TensorSpec.from_dict(t) for t in data["outputs"])
        kwargs["parts"] = tuple(cls.from_dict(part) for part in data.get("parts", ()))
        return cls(**kwargs)


@dataclass(frozen=True)
class OpSample:
    """One timed node: its cost features (as the planner's Graph gives them) and measured milliseconds.
    `source` is 'sweep' or the model's file name; `label` says which case or node it was."""

    op_type: str
    flops: float
    bytes: float
    param_bytes: float
    out_bytes: float
    ms: float
    dtype: str = "float32"
    source: str = "sweep"
    label: str = ""


def device_resource(device: str) -> str:
    """The Ray custom resource that stands for a cluster.yaml device: its node declares it, its stage's
    actor asks for it (serve --address, and KubeRay's worker groups)."""
    return f"nndeploy-device-{device}"
