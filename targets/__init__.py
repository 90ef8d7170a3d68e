"""nndeploy.targets: devices and cluster.yaml, the ONNX frontend, per-target builds, tuning, artifacts and
measurement, each a room of its own; the verbs (compile, tune, verify, inspect) are modules at this root."""

from nndeploy.targets.devices.cluster import load_cluster, parse_cluster
from nndeploy.targets.devices.registry import (
    Profile,
    closest_names,
    device_from_profile,
    load_profiles,
)

__all__ = [
    "Profile",
    "closest_names",
    "device_from_profile",
    "load_cluster",
    "load_profiles",
    "parse_cluster",
]
