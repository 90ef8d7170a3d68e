"""Tests for nndeploy.targets.devices.registry: the built-in profiles, user profiles, validation messages."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import pytest
import yaml

from nndeploy.errors import ClusterError
from nndeploy.targets.build.codegen import check_tvm_target
from nndeploy.targets.devices.registry import (
    BUILTIN_DIR,
    PROFILE_PATH_ENV,
    Profile,
    closest_names,
    device_from_profile,
    load_profiles,
)

REQUIRED = {
    "x86-avx2-server",
    "x86-avx512-server",
    "raspberry-pi-5",
    "jetson-orin-nano-cpu",
    "jetson-orin-nano-gpu",
    "nvidia-t4",
    "nvidia-l4",
    "nvidia-a100",
    "nvidia-h100",
}
DATACENTER_GPUS = ("nvidia-t4", "nvidia-l4", "nvidia-a100", "nvidia-h100")
GIB = 1024**3


@pytest.fixture(autouse=True)
def _no_env_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROFILE_PATH_ENV, raising=False)


@pytest.fixture(scope="module")
def builtins() -> dict[str, Profile]:
    return load_profiles()


def _raw(name: str) -> dict:
    return yaml.safe_load((BUILTIN_DIR / f"{name}.yaml").read_text())


def _write(folder: Path, filename: str, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    path.write_text(yaml.safe_dump(data))
    return path


def test_all_required_profiles_load(builtins: dict[str, Profile]) -> None:
    assert set(builtins) >= REQUIRED
    for name, profile in builtins.items():
        assert profile.name == name
        assert Path(profile.path).name == f"{name}.yaml", "one file per profile, named after it"
        assert profile.path.startswith("profiles/")


def test_every_builtin_cites_sources(builtins: dict[str, Profile]) -> None:
    for profile in builtins.values():
        assert profile.sources, profile.name
        for source in profile.sources:
            assert source["url"].startswith("https://"), (profile.name, source)
            assert source["figures"].strip(), (profile.name, source)


def test_kind_matches_arch_and_target(builtins: dict[str, Profile]) -> None:
    for p in builtins.values():
        tkind = p.tvm_target["kind"]
        if p.kind == "gpu":
            assert p.arch == "cuda" and tkind == "cuda", p.name
            assert p.tvm_target["arch"] == p.cross_compile["nvcc_arch"], p.name
            assert p.tvm_target["host"]["kind"] == "llvm", p.name
        elif p.kind == "cpu":
            assert p.arch == "x86_64" and tkind == "llvm", p.name
            assert p.tvm_target["mtriple"] == "x86_64-linux-gnu"
            assert p.cross_compile is None, "x86-64 builds natively"
        else:
            assert p.kind == "edge" and p.arch == "aarch64" and tkind == "llvm", p.name
            assert p.tvm_target["mtriple"] == "aarch64-linux-gnu"
            assert p.cross_compile["cc"] == "aarch64-linux-gnu-gcc"
            assert p.cross_compile["debian_package"] == "gcc-aarch64-linux-gnu"
        assert p.ops is None, "built-ins claim every ONNX op"
        assert "float32" in p.dtypes and set(p.peak_gflops) <= p.dtypes


def test_cuda_arches(builtins: dict[str, Profile]) -> None:
    arches = {n: builtins[n].tvm_target["arch"] for n in (*DATACENTER_GPUS, "jetson-orin-nano-gpu")}
    assert arches == {
        "nvidia-t4": "sm_75",
        "nvidia-l4": "sm_89",
        "nvidia-a100": "sm_80",
        "nvidia-h100": "sm_90",
        "jetson-orin-nano-gpu": "sm_87",
    }
    assert builtins["jetson-orin-nano-gpu"].tvm_target["host"]["mtriple"] == "aarch64-linux-gnu"


def test_cpu_peaks_follow_the_documented_arithmetic(builtins: dict[str, Profile]) -> None:
    # cores x GHz x FLOP/cycle, as the YAML comments derive them
    expected = {
        "x86-avx2-server": 16 * 3.0 * 32,
        "x86-avx512-server": 40 * 2.3 * 64,
        "raspberry-pi-5": 4 * 2.4 * 16,
        "jetson-orin-nano-cpu": 6 * 1.5 * 16,
        "jetson-orin-nano-gpu": 1024 * 2 * 0.625,
    }
    for name, gflops in expected.items():
        assert math.isclose(builtins[name].peak_gflops["float32"], gflops, rel_tol=1e-9), name
    for name in ("raspberry-pi-5", "jetson-orin-nano-cpu"):
        p = builtins[name]
        assert math.isclose(p.peak_gflops["float16"], 2 * p.peak_gflops["float32"])
        assert math.isclose(p.peak_gflops["int8"], 4 * p.peak_gflops["float32"])
    assert builtins["x86-avx512-server"].tvm_target["num-cores"] == 40
    assert builtins["raspberry-pi-5"].tvm_target["num-cores"] == 4


def test_gpus_outrun_cpus(builtins: dict[str, Profile]) -> None:
    cpus = [p for p in builtins.values() if p.kind != "gpu"]
    for name in DATACENTER_GPUS:
        gpu = builtins[name]
        assert all(gpu.peak_gflops["float32"] > c.peak_gflops["float32"] for c in cpus), name
        assert all(gpu.mem_bw_gbytes_s > c.mem_bw_gbytes_s for c in cpus), name
        assert gpu.peak_gflops["float16"] > 3 * gpu.peak_gflops["float32"], "tensor cores"
        assert gpu.peak_gflops["int8"] >= gpu.peak_gflops["float16"]
    jetson = builtins["jetson-orin-nano-gpu"]
    for edge in ("jetson-orin-nano-cpu", "raspberry-pi-5"):
        assert jetson.peak_gflops["float32"] > builtins[edge].peak_gflops["float32"]
    order = ["nvidia-h100", "nvidia-a100", "nvidia-l4", "nvidia-t4"]
    fp16 = [builtins[n].peak_gflops["float16"] for n in order]
    assert fp16 == sorted(fp16, reverse=True)


def test_memory_sizes_and_bandwidths(builtins: dict[str, Profile]) -> None:
    gib = {n: p.mem_bytes / GIB for n, p in builtins.items()}
    assert gib["raspberry-pi-5"] == 8
    assert gib["jetson-orin-nano-cpu"] == gib["jetson-orin-nano-gpu"] == 8
    assert gib["nvidia-t4"] == 16 and gib["nvidia-l4"] == 24
    assert gib["nvidia-a100"] == gib["nvidia-h100"] == 80
    assert 32 <= gib["x86-avx2-server"] <= 4096 and 32 <= gib["x86-avx512-server"] <= 4096
    bw = {n: p.mem_bw_gbytes_s for n, p in builtins.items()}
    assert 15 < bw["raspberry-pi-5"] < 20
    assert bw["jetson-orin-nano-cpu"] == bw["jetson-orin-nano-gpu"] == 68
    assert bw["nvidia-h100"] > bw["nvidia-a100"] > bw["nvidia-t4"] > bw["jetson-orin-nano-gpu"]
    assert bw["x86-avx512-server"] == pytest.approx(8 * 3.2 * 8)
    for p in builtins.values():
        assert isinstance(p.mem_bytes, int)
        limit = 20 if p.kind == "gpu" else 10
        assert 0 < p.launch_overhead_us <= limit, p.name


def test_tvm_accepts_every_builtin_target(builtins: dict[str, Profile]) -> None:
    pytest.importorskip("tvm")
    from tvm.target import Target, codegen

    for p in builtins.values():
        check_tvm_target(p.tvm_target, str(p.path))
        target = Target(p.tvm_target)
        assert target.kind.name == p.tvm_target["kind"], p.name
        if p.kind == "gpu":
            assert str(target.attrs["arch"]) == p.tvm_target["arch"]
            assert target.host is not None and target.host.kind.name == "llvm"
        else:
            assert int(target.attrs["num-cores"]) == p.tvm_target["num-cores"]
    features = {
        "x86-avx2-server": (["avx2", "fma", "f16c"], ["avx512f"]),
        "x86-avx512-server": (["avx512f", "avx512bw", "avx512vnni"], []),
        "raspberry-pi-5": (["neon", "dotprod", "fullfp16"], []),
        "jetson-orin-nano-cpu": (["neon", "dotprod", "fullfp16"], []),
    }
    for name, (has, lacks) in features.items():
        target = Target(builtins[name].tvm_target)
        assert codegen.llvm_cpu_has_features(has, target), name
        for feature in lacks:
            assert not codegen.llvm_cpu_has_features([feature], target), (name, feature)


def test_tvm_refusals_become_cluster_errors(builtins: dict[str, Profile]) -> None:
    pytest.importorskip("tvm")
    pi = builtins["raspberry-pi-5"]
    bad_cpu = dataclasses.replace(pi, tvm_target={**pi.tvm_target, "mcpu": "cortex-a99"})
    with pytest.raises(ClusterError, match=r"raspberry-pi-5\.yaml: tvm_target\.mcpu: .*cortex-a99"):
        check_tvm_target(bad_cpu.tvm_target, str(bad_cpu.path))
    bad_key = dataclasses.replace(pi, tvm_target={**pi.tvm_target, "mcpus": "cortex-a76"})
    with pytest.raises(ClusterError, match=r"tvm_target: TVM refuses it: .*mcpus"):
        check_tvm_target(bad_key.tvm_target, str(bad_key.path))


def test_user_dir_overrides_and_adds(tmp_path: Path) -> None:
    pi = _raw("raspberry-pi-5")
    pi["mem_gib"] = 4
    pi["description"] = "Raspberry Pi 5, 4 GB model"
    _write(tmp_path / "mine", "pi.yaml", pi)
    board = _raw("raspberry-pi-5") | {"name": "my-board", "mem_gib": 2}
    _write(tmp_path / "mine", "my-board.yml", board)
    profiles = load_profiles([tmp_path / "mine"])
    assert profiles["raspberry-pi-5"].mem_bytes == 4 * GIB
    assert profiles["raspberry-pi-5"].path == str(tmp_path / "mine" / "pi.yaml")
    assert profiles["my-board"].mem_bytes == 2 * GIB
    assert profiles["nvidia-t4"].path == "profiles/nvidia-t4.yaml"
    assert load_profiles()["raspberry-pi-5"].mem_bytes == 8 * GIB, "built-ins untouched"


def test_single_file_and_mem_bytes(tmp_path: Path) -> None:
    data = _raw("nvidia-t4") | {"name": "t4-small"}
    del data["mem_gib"]
    data["mem_bytes"] = 15 * 1024**3
    path = _write(tmp_path, "t4-small.yaml", data)
    assert load_profiles([str(path)])["t4-small"].mem_bytes == 15 * GIB


def test_env_path_and_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "env1", "a.yaml", _raw("nvidia-l4") | {"name": "env-gpu", "mem_gib": 1})
    _write(tmp_path / "env2", "b.yaml", _raw("nvidia-l4") | {"name": "env-gpu-2"})
    env = f"{tmp_path / 'env1'}{os.pathsep}{tmp_path / 'env2'}"
    monkeypatch.setenv(PROFILE_PATH_ENV, env)
    profiles = load_profiles()
    assert {"env-gpu", "env-gpu-2"} <= set(profiles)
    _write(tmp_path / "cli", "c.yaml", _raw("nvidia-l4") | {"name": "env-gpu", "mem_gib": 2})
    assert load_profiles([tmp_path / "cli"])["env-gpu"].mem_bytes == 2 * GIB, "explicit paths win"


def test_env_path_missing_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROFILE_PATH_ENV, str(tmp_path / "nope"))
    with pytest.raises(ClusterError, match=r"nope: profile path not found"):
        load_profiles()


def test_bad_profile_names_file_and_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    board = _raw("raspberry-pi-5") | {"name": "my-board"}
    board["peak_gflops"]["float32"] = 0
    _write(tmp_path / "profiles", "my-board.yaml", board)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ClusterError) as info:
        load_profiles(["profiles"])
    message = str(info.value)
    assert "profiles/my-board.yaml: peak_gflops.float32: must be > 0" in message
    assert "\n" not in message and str(tmp_path) not in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"kind": "tpu"}, "kind: must be one of 'cpu', 'gpu' or 'edge', got 'tpu'"),
        ({"kindd": "cpu"}, "kindd: unknown key; did you mean 'kind'?"),
        ({"mem_bw_gbytes_s": -3}, "mem_bw_gbytes_s: must be > 0, got -3"),
        ({"mem_bw_gbytes_s": "fast"}, "mem_bw_gbytes_s: must be a number, got 'fast'"),
        ({"launch_overhead_us": -1}, "launch_overhead_us: must be >= 0"),
        ({"name": "My Board"}, "name: must be a lowercase slug"),
        ({"peak_gflops": {"flaot32": 10}}, "peak_gflops.flaot32: unknown dtype; did you mean 'float32'?"),
        ({"peak_gflops": {"int8": 10.0}}, "peak_gflops.float32: required"),
        ({"dtypes": ["float32", "int3"]}, "dtypes[1]: unknown dtype 'int3'"),
        ({"mem_bytes": 5}, "mem_gib: give exactly one of mem_gib and mem_bytes"),
        ({"tvm_target": {"kind": "cuda", "arch": "sm_87"}}, "tvm_target.kind: must be one of llvm, c"),
        ({"tvm_target": {"mcpu": "x"}}, "tvm_target.kind: required"),
        ({"cross_compile": {"ccc": "gcc"}}, "cross_compile.ccc: unknown key; did you mean 'cc'?"),
        ({"sources": [{"url": "nope", "figures": "x"}]}, "sources[0].url: must be an http(s) URL"),
    ],
)
def test_validation_messages(tmp_path: Path, change: dict, expected: str) -> None:
    path = _write(tmp_path, "board.yaml", _raw("raspberry-pi-5") | {"name": "board"} | change)
    with pytest.raises(ClusterError) as info:
        load_profiles([path])
    assert f"{path}: {expected}" in str(info.value)


def test_gpu_profile_needs_cuda_arch(tmp_path: Path) -> None:
    gpu = _raw("nvidia-t4") | {"name": "t4b", "tvm_target": {"kind": "cuda"}}
    path = _write(tmp_path, "t4b.yaml", gpu)
    with pytest.raises(ClusterError, match=r"tvm_target\.arch: required for cuda"):
        load_profiles([path])


def test_several_problems_in_one_message(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "b.yaml", _raw("raspberry-pi-5") | {"name": "b", "kind": "x", "mem_bw_gbytes_s": 0}
    )
    with pytest.raises(ClusterError) as info:
        load_profiles([path])
    assert "kind: must be one of" in str(info.value) and "mem_bw_gbytes_s: must be > 0" in str(info.value)


def test_unreadable_profiles(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ClusterError, match=r"broken\.yaml: not valid YAML: .*line"):
        load_profiles([tmp_path / "broken.yaml"])
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ClusterError, match=r"list\.yaml: a profile must be a mapping"):
        load_profiles([tmp_path / "list.yaml"])
    with pytest.raises(ClusterError, match=r"missing\.yaml: profile path not found"):
        load_profiles([tmp_path / "missing.yaml"])


def test_same_name_twice_in_one_folder(tmp_path: Path) -> None:
    _write(tmp_path / "d", "one.yaml", _raw("nvidia-t4") | {"name": "dup"})
    _write(tmp_path / "d", "two.yaml", _raw("nvidia-t4") | {"name": "dup"})
    with pytest.raises(ClusterError, match=r"two\.yaml: name: 'dup' is also defined in .*one\.yaml"):
        load_profiles([tmp_path / "d"])


def test_closest_names(builtins: dict[str, Profile]) -> None:
    close = closest_names("jetsn-orin", builtins)
    assert close and set(close[:2]) == {"jetson-orin-nano-gpu", "jetson-orin-nano-cpu"}
    assert closest_names("raspbery-pi-5", builtins)[0] == "raspberry-pi-5"
    assert closest_names("zzzz", builtins) == []


def test_device_from_profile(builtins: dict[str, Profile]) -> None:
    profile = builtins["jetson-orin-nano-gpu"]
    device = device_from_profile(profile, "jet", host="10.0.0.5", node_labels={"a": "b"})
    assert (device.name, device.profile, device.kind, device.arch) == ("jet", profile.name, "gpu", "cuda")
    assert device.mem_bytes == 8 * GIB and device.host == "10.0.0.5" and device.node_labels == {"a": "b"}
    assert device.peak_gflops_for("float16") == 10240.0
    assert device.supports_dtype("bfloat16") and not device.supports_dtype("float64")
    assert device.cross_compile == profile.cross_compile
    assert type(device).from_dict(device.to_dict()) == device, "JSON round trip"
    device.tvm_target["host"]["mcpu"] = "changed"
    assert profile.tvm_target["host"]["mcpu"] == "cortex-a78ae", "the device holds a copy"
