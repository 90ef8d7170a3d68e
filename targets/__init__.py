"""nndeploy.targets: the device-capability registry, cluster.yaml parsing, and per-target builds."""

from nndeploy.targets.cluster import load_cluster, parse_cluster
from nndeploy.targets.registry import (
    Profile,
    check_tvm_target,
    closest_names,
    device_from_profile,
    load_profiles,
)

__all__ = [
    "Profile",
    "check_tvm_target",
    "closest_names",
    "device_from_profile",
    "load_cluster",
    "load_profiles",
    "parse_cluster",
]
