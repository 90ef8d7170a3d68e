"""Tests for nndeploy.targets.devices.cluster: the example clusters, every validation error, link lookup."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nndeploy.errors import ClusterError
from nndeploy.targets.devices.cluster import MAX_DEVICES, load_cluster, parse_cluster
from nndeploy.targets.devices.registry import BUILTIN_DIR, PROFILE_PATH_ENV
from nndeploy.types import Cluster

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "clusters"
GIB = 1024**3


@pytest.fixture(autouse=True)
def _no_env_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROFILE_PATH_ENV, raising=False)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _base() -> dict:
    return {
        "devices": [
            {"name": "cam", "profile": "raspberry-pi-5"},
            {"name": "server", "profile": "x86-avx512-server"},
        ],
        "links": [{"between": ["cam", "server"], "gbps": 0.1, "latency_ms": 2.0}],
        "input_at": "cam",
        "output_to": "cam",
    }


def _errors(data: object, name: str = "cluster.yaml") -> str:
    """The message of the ClusterError that loading `data` from ./<name> raises."""
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    Path(name).write_text(text)
    with pytest.raises(ClusterError) as info:
        load_cluster(name)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the examples ---------------------------------------------------------------------------------


def test_examples_exist() -> None:
    names = {p.name for p in EXAMPLES.glob("*.yaml")}
    assert {
        "edge-camera-server.yaml",
        "cpu-gpu-server.yaml",
        "edge-boards-gpu.yaml",
        "two-servers.yaml",
    } <= names


def test_edge_camera_server() -> None:
    c = load_cluster(EXAMPLES / "edge-camera-server.yaml")
    assert c.name == "edge-camera-server"
    assert [(d.name, d.profile) for d in c.devices] == [
        ("camera", "raspberry-pi-5"),
        ("server", "x86-avx512-server"),
    ]
    assert (c.source, c.sink) == ("camera", "server")
    assert c.link("server", "camera").gbps == 0.1 and c.link("camera", "server").latency_ms == 3.0
    assert c.device("camera").node_labels["kubernetes.io/hostname"] == "cam-01"
    assert c.device("camera").host == "192.168.1.20"


def test_cpu_gpu_server() -> None:
    c = load_cluster(EXAMPLES / "cpu-gpu-server.yaml")
    assert {d.kind for d in c.devices} == {"cpu", "gpu"}
    assert c.source == c.sink == "host"
    assert c.link("host", "gpu").gbps == 128
    gpu = c.device("gpu")
    assert gpu.tvm_target["arch"] == "sm_89"
    assert gpu.node_labels["kubernetes.io/hostname"] == c.device("host").node_labels["kubernetes.io/hostname"]


def test_edge_boards_gpu_uses_default_link() -> None:
    c = load_cluster(EXAMPLES / "edge-boards-gpu.yaml")
    kinds = [d.kind for d in c.devices]
    assert kinds.count("edge") >= 2 and kinds.count("gpu") == 1
    assert c.source == c.sink == "board-a"
    ethernet = c.link("board-a", "jetson-gpu")
    assert (ethernet.gbps, ethernet.latency_ms) == (1.0, 0.2)
    assert c.link("jetson-gpu", "jetson-cpu").gbps == 256
    assert c.device("jetson-gpu").node_labels["nvidia.com/gpu.present"] == "true"


def test_two_servers_are_identical() -> None:
    c = load_cluster(EXAMPLES / "two-servers.yaml")
    a, b = c.devices
    assert a.profile == b.profile == "x86-avx512-server"
    assert a.peak_gflops == b.peak_gflops and a.mem_bw_gbytes_s == b.mem_bw_gbytes_s
    assert c.link("server-a", "server-b").gbps == 25
    assert (c.source, c.sink) == ("server-a", "server-b")


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_round_trip_json(path: Path) -> None:
    c = load_cluster(path)
    assert Cluster.from_dict(c.to_dict()) == c
    assert 1 <= len(c.devices) <= MAX_DEVICES
    assert all(d.node_labels for d in c.devices), "examples show Kubernetes node labels"


# --- links and defaults ---------------------------------------------------------------------------


def test_link_lookup_and_defaults(in_tmp: Path) -> None:
    data = _base()
    data["devices"].append({"name": "gpu", "profile": "nvidia-t4"})
    Path("c.yaml").write_text(yaml.safe_dump(data))
    c = load_cluster("c.yaml")
    assert c.name == "c"
    assert c.source == c.sink == "cam"
    assert c.link("cam", "cam") is None and c.transfer_ms("cam", "cam", 10**9) == 0.0
    assert c.link("server", "cam") == c.link("cam", "server")
    default = c.link("cam", "gpu")
    assert (default.a, default.b, default.gbps, default.latency_ms) == ("cam", "gpu", 10.0, 0.1)
    # 1.25 MB over 0.1 Gb/s = 100 ms, plus 2 ms latency
    assert c.transfer_ms("cam", "server", 1_250_000) == pytest.approx(102.0)


def test_default_link_and_endpoints(in_tmp: Path) -> None:
    data = _base() | {"default_link": {"gbps": 40}, "input_at": "server", "output_to": "cam", "name": "x1"}
    data["links"] = []
    Path("c.yaml").write_text(yaml.safe_dump(data))
    c = load_cluster("c.yaml")
    assert (c.default_link.gbps, c.default_link.latency_ms) == (40.0, 0.1)
    assert (c.source, c.sink, c.name) == ("server", "cam", "x1")


def test_parse_cluster_from_a_dict(tmp_path: Path) -> None:
    c = parse_cluster(_base(), "inline", tmp_path)
    assert [d.name for d in c.devices] == ["cam", "server"]
    assert c.device("server").mem_bytes == 256 * GIB


def test_cluster_profiles_folder_relative_to_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "site" / "my-profiles"
    folder.mkdir(parents=True)
    board = yaml.safe_load((BUILTIN_DIR / "raspberry-pi-5.yaml").read_text()) | {
        "name": "my-board",
        "mem_gib": 2,
    }
    (folder / "my-board.yaml").write_text(yaml.safe_dump(board))
    data = _base() | {"profiles": ["./my-profiles"]}
    data["devices"][0]["profile"] = "my-board"
    (tmp_path / "site" / "cluster.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    c = load_cluster("site/cluster.yaml")
    assert c.device("cam").profile == "my-board" and c.device("cam").mem_bytes == 2 * GIB


def test_bad_profile_in_cluster_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "my-profiles"
    folder.mkdir()
    board = yaml.safe_load((BUILTIN_DIR / "raspberry-pi-5.yaml").read_text()) | {"name": "my-board"}
    board["peak_gflops"]["float32"] = -1
    (folder / "my-board.yaml").write_text(yaml.safe_dump(board))
    monkeypatch.chdir(tmp_path)
    message = _errors(_base() | {"profiles": ["my-profiles"], "links": [], "input_at": "nobody"})
    assert "my-board.yaml: peak_gflops.float32: must be > 0" in message
    assert "cluster.yaml: input_at: unknown device 'nobody'" in message, "other problems still reported"


def test_extra_profile_paths_argument(tmp_path: Path) -> None:
    gpu = yaml.safe_load((BUILTIN_DIR / "nvidia-t4.yaml").read_text()) | {"name": "lab-gpu"}
    (tmp_path / "lab-gpu.yaml").write_text(yaml.safe_dump(gpu))
    data = _base()
    data["devices"][1]["profile"] = "lab-gpu"
    c = parse_cluster(data, "c.yaml", tmp_path, extra_profile_paths=[tmp_path / "lab-gpu.yaml"])
    assert c.device("server").kind == "gpu"


# --- one error at a time ----------------------------------------------------------------------------


def test_file_missing(in_tmp: Path) -> None:
    with pytest.raises(ClusterError, match=r"^nothere\.yaml: file not found$"):
        load_cluster("nothere.yaml")


def test_not_yaml(in_tmp: Path) -> None:
    message = _errors("devices: [\n  - {name: a\n")
    assert message.startswith("cluster.yaml: not valid YAML: ") and "line" in message


def test_not_a_mapping(in_tmp: Path) -> None:
    assert _errors("- a\n- b\n") == "cluster.yaml: must be a mapping with a 'devices' list, got a list"
    assert "the file is empty" in _errors("")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"devices": None}, "cluster.yaml: devices: required"),
        ({"devices": []}, "cluster.yaml: devices: at least one device is required"),
        ({"devices": "cam"}, "cluster.yaml: devices: must be a list of devices, got 'cam'"),
        (
            {"defualt_link": {"gbps": 1}},
            "cluster.yaml: defualt_link: unknown key; did you mean 'default_link'?",
        ),
        ({"name": "My Cluster"}, "cluster.yaml: name: 'My Cluster' is not a valid name"),
        ({"input_at": "gpu1"}, "cluster.yaml: input_at: unknown device 'gpu1'; devices are: cam, server"),
        ({"output_to": "servr"}, "cluster.yaml: output_to: unknown device 'servr' (did you mean 'server'?)"),
        ({"default_link": {"gbps": 0}}, "cluster.yaml: default_link.gbps: must be > 0, got 0"),
        ({"default_link": {"gbs": 1}}, "cluster.yaml: default_link.gbs: unknown key; did you mean 'gbps'?"),
        ({"profiles": ["./none"]}, "cluster.yaml: profiles[0]: no such profile file or folder"),
    ],
)
def test_top_level_errors(in_tmp: Path, change: dict, expected: str) -> None:
    data = _base() | change
    if data["devices"] is None:
        del data["devices"]
        data["links"] = []
    assert expected in _errors(data)


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ({"name": "Camera_1", "profile": "nvidia-t4"}, "devices[2].name: 'Camera_1' is not a valid name"),
        (
            {"name": "cam", "profile": "nvidia-t4"},
            "devices[2].name: duplicate device name 'cam' (also devices[0])",
        ),
        ({"profile": "nvidia-t4"}, "devices[2].name: required"),
        ({"name": "jet"}, "devices[2].profile: required"),
        (
            {"name": "jet", "profile": "jetsn-orin"},
            "devices[2].profile: unknown profile 'jetsn-orin'; did you mean 'jetson-orin-nano-",
        ),
        (
            {"name": "jet", "profile": "qqqq"},
            "devices[2].profile: unknown profile 'qqqq' (known: jetson-orin",
        ),
        ({"name": "jet", "proflie": "nvidia-t4"}, "devices[2].proflie: unknown key; did you mean 'profile'?"),
        (
            {"name": "jet", "profile": "nvidia-t4", "host": 12},
            "devices[2].host: must be an address or host name",
        ),
        (
            {"name": "jet", "profile": "nvidia-t4", "labels": {"gpu": True}},
            "devices[2].labels.gpu: label value must be a string (quote it in YAML), got a boolean",
        ),
        (
            {"name": "jet", "profile": "nvidia-t4", "labels": {"bad key!": "x"}},
            "devices[2].labels.bad key!: not a valid Kubernetes label key",
        ),
        ({"name": "jet", "profile": "nvidia-t4", "labels": ["a"]}, "devices[2].labels: must be a mapping"),
        ("jet", "devices[2]: must be a mapping with name and profile, got 'jet'"),
    ],
)
def test_device_errors(in_tmp: Path, device: object, expected: str) -> None:
    data = _base()
    data["devices"].append(device)
    assert f"cluster.yaml: {expected}" in _errors(data)


@pytest.mark.parametrize(
    ("link", "expected"),
    [
        (
            {"between": ["cam", "gpu1"], "gbps": 1, "latency_ms": 0},
            "links[1].between[1]: unknown device 'gpu1'; devices are: cam, server",
        ),
        (
            {"between": ["cam", "cam"], "gbps": 1, "latency_ms": 0},
            "links[1].between: a device cannot link to itself",
        ),
        (
            {"between": ["cam"], "gbps": 1, "latency_ms": 0},
            "links[1].between: must be a list of two device names",
        ),
        ({"gbps": 1, "latency_ms": 0}, "links[1].between: required"),
        ({"between": ["cam", "server"], "gbps": 0, "latency_ms": 0}, "links[1].gbps: must be > 0, got 0"),
        ({"between": ["cam", "server"], "gbps": -2, "latency_ms": 0}, "links[1].gbps: must be > 0, got -2"),
        ({"between": ["cam", "server"], "gbps": "fast", "latency_ms": 0}, "links[1].gbps: must be a number"),
        (
            {"between": ["cam", "server"], "gbps": 1, "latency_ms": -1},
            "links[1].latency_ms: must be >= 0, got -1",
        ),
        ({"between": ["cam", "server"], "latency_ms": 1}, "links[1].gbps: required"),
        (
            {"between": ["server", "cam"], "gbps": 1, "latency_ms": 0},
            "links[1].between: duplicate link between server and cam (also links[0])",
        ),
        (
            {"between": ["cam", "server"], "gbps": 1, "latency": 0},
            "links[1].latency: unknown key; did you mean 'latency_ms'?",
        ),
    ],
)
def test_link_errors(in_tmp: Path, link: dict, expected: str) -> None:
    data = _base()
    data["links"].append(link)
    assert f"cluster.yaml: {expected}" in _errors(data)


def test_too_many_devices(in_tmp: Path) -> None:
    data = {"devices": [{"name": f"d{i}", "profile": "x86-avx2-server"} for i in range(MAX_DEVICES + 1)]}
    message = _errors(data)
    assert f"cluster.yaml: devices: {MAX_DEVICES + 1} devices given; at most {MAX_DEVICES}" in message
    data["devices"].pop()
    data |= {"input_at": "d0", "output_to": "d0"}
    Path("ok.yaml").write_text(yaml.safe_dump(data))
    assert len(load_cluster("ok.yaml").devices) == MAX_DEVICES


# --- several errors at once -------------------------------------------------------------------------


def test_all_problems_in_one_message(in_tmp: Path) -> None:
    data = {
        "nmae": "x",
        "devices": [
            {"name": "cam", "profile": "raspberry-pi-5"},
            {"name": "cam", "profile": "x86-avx512-server"},
            {"name": "gpu", "profile": "jetsn-orin"},
        ],
        "links": [
            {"between": ["cam", "gpu1"], "gbps": 0, "latency_ms": -1},
            {"between": ["gpu", "gpu"], "gbps": 1, "latency_ms": 0},
        ],
        "input_at": "nowhere",
        "output_to": "cam",
    }
    message = _errors(data)
    expected = [
        "nmae: unknown key; did you mean 'name'?",
        "devices[1].name: duplicate device name 'cam' (also devices[0])",
        "devices[2].profile: unknown profile 'jetsn-orin'; did you mean 'jetson-orin-nano-gpu'?",
        "links[0].between[1]: unknown device 'gpu1' (did you mean 'gpu'?); devices are: cam, gpu",
        "links[0].gbps: must be > 0, got 0",
        "links[0].latency_ms: must be >= 0, got -1",
        "links[1].between: a device cannot link to itself ('gpu')",
        "input_at: unknown device 'nowhere'",
    ]
    for line in expected:
        assert f"cluster.yaml: {line}" in message
    assert message.count("cluster.yaml: ") == len(expected)


def test_message_uses_the_name_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    data = _base() | {"input_at": "nope"}
    (tmp_path / "sub" / "my cluster.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ClusterError) as info:
        load_cluster("sub/my cluster.yaml")
    assert str(info.value).startswith("sub/my cluster.yaml: input_at: unknown device 'nope'")
    assert str(tmp_path) not in str(info.value)


def test_hop_cost_is_read_checked_and_kept_in_the_plan_form(tmp_path: Path) -> None:
    devices = [{"name": "a", "profile": "x86-avx512-server"}, {"name": "b", "profile": "x86-avx512-server"}]
    ends = {"input_at": "a", "output_to": "b"}
    cluster = parse_cluster(
        {"devices": devices, "hop": {"fixed_ms": 0.5, "ms_per_mib": 1}, **ends}, "c.yaml", tmp_path
    )
    assert cluster.hop is not None and (cluster.hop.fixed_ms, cluster.hop.ms_per_mib) == (0.5, 1.0)
    assert Cluster.from_dict(cluster.to_dict()) == cluster
    assert parse_cluster({"devices": devices, **ends}, "c.yaml", tmp_path).hop is None
    with pytest.raises(ClusterError) as caught:
        parse_cluster({"devices": devices, "hop": {"fixed_ms": -1, "ms_per_mb": 2}}, "c.yaml", tmp_path)
    message = str(caught.value)
    assert "c.yaml: hop.ms_per_mb: unknown key; did you mean 'ms_per_mib'?" in message
    assert "hop.fixed_ms: must be >= 0, got -1" in message
    with pytest.raises(ClusterError, match="hop: must be a mapping with fixed_ms and ms_per_mib"):
        parse_cluster({"devices": devices, "hop": 0.3}, "c.yaml", tmp_path)
