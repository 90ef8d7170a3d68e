"""Device profiles rewritten with measured figures: what `nndeploy profile` leaves beside calibration.json.

The YAML keeps the original profile's name (so `--profiles FOLDER` layers it over the built-in) and every
field, except the measured fp32 peak (other dtypes scaled by the same ratio), the measured memory
bandwidth and `num-cores` (the thread count measured with); a header comment and the description say
where and when it was measured.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from nndeploy.targets.devices.registry import Profile, get_profile, load_profile_file, load_profiles


def find_profile(name: str, cluster_path: Path, extra_paths: Sequence[str | Path] = ()) -> Profile:
    """The profile `name` as the cluster at `cluster_path` resolves it (its own `profiles:` entries,
    then `extra_paths`, over the built-ins)."""
    data = yaml.safe_load(cluster_path.read_text(encoding="utf-8"))
    own = (data.get("profiles") if isinstance(data, dict) else None) or []
    own_paths = [cluster_path.parent / str(p) for p in (own if isinstance(own, list) else [own])]
    return get_profile(name, load_profiles([*own_paths, *extra_paths]))


def measured_profile_data(
    profile: Profile,
    peak_gflops: float,
    mem_bw_gbytes_s: float,
    threads: int,
    host: Mapping[str, str],
    measured_at: str,
) -> dict[str, Any]:
    """The profile's fields as a YAML-ready mapping, with the measured figures in."""
    ratio = peak_gflops / profile.peak_gflops["float32"]
    target = copy.deepcopy(profile.tvm_target)
    if target.get("kind") in ("llvm", "c"):
        target["num-cores"] = int(threads)
    where = f"{host.get('hostname', '?')} ({host.get('cpu', '?')}, {threads} threads)"
    return {
        "name": profile.name,
        "description": f"{profile.description}; peak and bandwidth measured on {where} at {measured_at}",
        "kind": profile.kind,
        "arch": profile.arch,
        "tvm_target": target,
        "peak_gflops": {dtype: round(value * ratio, 2) for dtype, value in profile.peak_gflops.items()},
        "mem_bw_gbytes_s": round(float(mem_bw_gbytes_s), 2),
        "mem_bytes": int(profile.mem_bytes),
        "launch_overhead_us": float(profile.launch_overhead_us),
        "ops": sorted(profile.ops) if profile.ops is not None else None,
        "dtypes": sorted(profile.dtypes),
        "cross_compile": copy.deepcopy(profile.cross_compile),
        "sources": [dict(s) for s in profile.sources],
    }


def write_measured_profile(
    profile: Profile,
    folder: Path,
    peak_gflops: float,
    mem_bw_gbytes_s: float,
    threads: int,
    host: Mapping[str, str],
    measured_at: str,
) -> Path:
    """Write `folder`/<name>.yaml with the measured figures (checked by loading it back); its path."""
    data = measured_profile_data(profile, peak_gflops, mem_bw_gbytes_s, threads, host, measured_at)
    spec_peak, spec_bw = profile.peak_gflops["float32"], profile.mem_bw_gbytes_s
    header = [
        f"# Measured by `nndeploy profile` on {host.get('hostname', '?')} ({host.get('cpu', '?')}, "
        f"{host.get('machine', '?')}) at {measured_at},",
        f"# with onnxruntime on {threads} thread(s). Measured: peak_gflops.float32 {peak_gflops:,.1f} "
        f"(spec {spec_peak:,.1f}), mem_bw_gbytes_s {mem_bw_gbytes_s:,.1f} (spec {spec_bw:,.1f});",
        "# the other dtypes' peaks are scaled by the same ratio and tvm_target num-cores is the thread",
        f"# count. Everything else is copied from {profile.path}. Per-op costs: calibration.json.",
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{profile.name}.yaml"
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=110)
    path.write_text("\n".join(header) + "\n" + body, encoding="utf-8")
    load_profile_file(path)
    return path
