"""What docs/cluster-yaml.md promises: the shipped JSON Schemas accept every example and built-in profile,
`nndeploy check` shows devices and links (marking guessed ones), no link is guessed silently, devices on
one host share the machine's own link, input_at/output_to are required with two or more devices, and
memory bandwidth says gigabytes."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from test_cli import assert_user_error, nndeploy

from nndeploy.errors import ClusterError
from nndeploy.targets.devices.cluster import SAME_HOST_LATENCY_MS, parse_cluster
from nndeploy.targets.devices.registry import BUILTIN_DIR, parse_profile

ROOT = Path(__file__).resolve().parents[3]
SCHEMAS = ROOT / "nndeploy" / "schemas"
CAMERA_T4 = {
    "name": "camera-t4",
    "devices": [
        {"name": "camera", "profile": "raspberry-pi-5", "host": "192.168.1.20"},
        {"name": "server", "profile": "x86-avx512-server", "host": "192.168.1.10"},
        {"name": "t4", "profile": "nvidia-t4", "host": "192.168.1.10"},
    ],
    "links": [{"between": ["camera", "server"], "gbps": 0.1, "latency_ms": 3.0}],
    "input_at": "camera",
    "output_to": "server",
}


def _schema(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / f"{name}.schema.json").read_text()))


@pytest.mark.parametrize(
    "path", sorted((ROOT / "examples" / "clusters").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_example_cluster_matches_the_schema_and_parses(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    assert list(_schema("cluster").iter_errors(data)) == []
    parse_cluster(data, path.name, path.parent)


@pytest.mark.parametrize("path", sorted(BUILTIN_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_builtin_profile_matches_the_schema(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    assert list(_schema("profile").iter_errors(data)) == []
    assert "mem_bw_gbps" not in data  # the shipped profiles use the key that says gigabytes


def test_the_schemas_refuse_what_the_parser_refuses() -> None:
    cluster = _schema("cluster")
    two = {"devices": [{"name": "a", "profile": "p"}, {"name": "b", "profile": "p"}]}
    assert any("input_at" in e.message for e in cluster.iter_errors(two))
    assert list(cluster.iter_errors({**two, "input_at": "a", "output_to": "b", "linkz": []}))
    assert list(cluster.iter_errors({"devices": [{"name": "A", "profile": "p"}]}))  # not a DNS label
    bad_link = {**two, "input_at": "a", "output_to": "b", "links": [{"between": ["a", "b"], "gbps": 0}]}
    assert list(cluster.iter_errors(bad_link))


def test_docs_example_is_valid_and_every_key_is_documented(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "cluster-yaml.md").read_text()
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    data = yaml.safe_load(example)
    assert list(_schema("cluster").iter_errors(data)) == []
    cluster = parse_cluster(data, "docs", tmp_path)
    assert {d.name for d in cluster.devices} == {"camera", "server", "t4"}
    schema = json.loads((SCHEMAS / "cluster.schema.json").read_text())
    for key in schema["properties"]:
        assert f"`{key}`" in text, key


def test_input_at_and_output_to_are_required_with_two_devices(tmp_path: Path) -> None:
    data = {key: value for key, value in CAMERA_T4.items() if key not in ("input_at", "output_to")}
    with pytest.raises(ClusterError) as info:
        parse_cluster(data, "c.yaml", tmp_path)
    message = str(info.value)
    assert "c.yaml: input_at: required with more than one device" in message
    assert "c.yaml: output_to: required" in message and "camera, server, t4" in message
    with pytest.raises(ClusterError, match="unknown device 'camra' \\(did you mean 'camera'\\?\\)"):
        parse_cluster({**CAMERA_T4, "input_at": "camra"}, "c.yaml", tmp_path)
    one = parse_cluster({"devices": [CAMERA_T4["devices"][1]]}, "c.yaml", tmp_path)
    assert one.source == one.sink == "server"  # one device: nothing to choose


def test_same_host_devices_get_the_machine_link_and_unstated_pairs_are_guesses(tmp_path: Path) -> None:
    cluster = parse_cluster(CAMERA_T4, "c.yaml", tmp_path)
    pcie = cluster.link("server", "t4")
    assert pcie is not None and pcie.gbps == pytest.approx(15.75 * 8)  # the T4's PCIe 3.0 x16, in gigabits
    assert pcie.latency_ms == SAME_HOST_LATENCY_MS
    assert not cluster.guessed("server", "t4") and not cluster.guessed("camera", "server")
    assert cluster.guessed("camera", "t4")  # nobody said how the Pi reaches the T4
    stated = parse_cluster({**CAMERA_T4, "default_link": {"gbps": 1}}, "c.yaml", tmp_path)
    assert not stated.guessed("camera", "t4")


def test_check_shows_devices_links_and_guesses(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(CAMERA_T4))
    done = nndeploy("check", path)
    assert done.returncode == 0, done.stderr
    assert "cluster 'camera-t4' is valid: 3 device(s)" in done.stdout
    assert "same host" in done.stdout and "built-in default (a guess)" in done.stdout
    assert "camera <-> t4" in done.stdout
    assert (
        "warning: 1 pair(s) use the built-in default link" in done.stderr and "camera and t4" in done.stderr
    )
    broken = dict(CAMERA_T4, devices=[{"name": "cam", "profile": "raspbery-pi-5"}, {"name": "cam"}])
    path.write_text(yaml.safe_dump(broken))
    assert_user_error(
        nndeploy("check", path),
        "did you mean 'raspberry-pi-5'",
        "duplicate device name 'cam'",
        "devices[1].profile: required",
    )


def test_check_a_profile_and_the_old_bandwidth_key(tmp_path: Path) -> None:
    data = yaml.safe_load((BUILTIN_DIR / "raspberry-pi-5.yaml").read_text())
    data["name"] = "my-board"
    data["mem_bw_gbps"] = data.pop("mem_bw_gbytes_s")
    path = tmp_path / "my-board.yaml"
    path.write_text(yaml.safe_dump(data))
    done = nndeploy("check", path)
    assert done.returncode == 0, done.stderr
    assert "profile 'my-board' is valid" in done.stdout and "GB/s (gigabytes)" in done.stdout
    assert "mem_bw_gbps is now mem_bw_gbytes_s" in done.stderr
    warned: list[str] = []
    profile = parse_profile(data, "my-board.yaml", warned.append)
    assert profile.mem_bw_gbytes_s == data["mem_bw_gbps"] and len(warned) == 1
    data["mem_bw_gbytes_s"] = data.pop("mem_bw_gbps")
    data["kind"] = "fpga"
    path.write_text(yaml.safe_dump(data))
    assert_user_error(nndeploy("check", path), "my-board.yaml", "kind")


def test_plan_warns_about_guessed_pairs_it_uses(tmp_path: Path) -> None:
    import onnx

    from models import conv_residual_model

    onnx.save(conv_residual_model(64), tmp_path / "m.onnx")
    cluster = {
        "devices": [{"name": "a", "profile": "x86-avx2-server"}, {"name": "b", "profile": "x86-avx2-server"}],
        "input_at": "a",
        "output_to": "b",  # the result must reach b: a -> b is used whatever the split
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cluster))
    done = nndeploy("plan", tmp_path / "m.onnx", "--cluster", tmp_path / "c.yaml", "-o", tmp_path / "p.json")
    assert done.returncode == 0, done.stderr
    assert "the plan sends data between a and b over the built-in default link" in done.stderr
    cluster["links"] = [{"between": ["a", "b"], "gbps": 10, "latency_ms": 0.1}]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cluster))
    done = nndeploy("plan", tmp_path / "m.onnx", "--cluster", tmp_path / "c.yaml", "-o", tmp_path / "p.json")
    assert done.returncode == 0 and "built-in default link" not in done.stderr
    # A plan written before memory bandwidth said gigabytes still loads.
    from nndeploy.planfile import read_plan

    data = json.loads((tmp_path / "p.json").read_text())
    for device in data["cluster"]["devices"]:
        device["mem_bw_gbps"] = device.pop("mem_bw_gbytes_s")
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert read_plan(tmp_path / "old.json").cluster.devices[0].mem_bw_gbytes_s > 0


def test_narrow_terminals_keep_identifiers_whole(tmp_path: Path) -> None:
    from nndeploy.targets.devices.registry import load_profiles

    done = nndeploy("devices", env={"NNDEPLOY_COLUMNS": "100"})
    assert done.returncode == 0, done.stderr
    for name in load_profiles(()):
        assert name in done.stdout, name  # never cut to "raspberry-pi…"
    import onnx

    from models import conv_residual_model

    onnx.save(conv_residual_model(64), tmp_path / "m.onnx")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CAMERA_T4))
    args = ("plan", tmp_path / "m.onnx", "--cluster", tmp_path / "c.yaml", "-o", tmp_path / "p.json")
    fitting = nndeploy(*args, env={"NNDEPLOY_COLUMNS": "120"})
    assert fitting.returncode == 0, fitting.stderr
    assert max(len(line) for line in fitting.stdout.splitlines()) <= 120
    narrow = nndeploy(*args, env={"NNDEPLOY_COLUMNS": "80"})
    assert narrow.returncode == 0, narrow.stderr
    assert "stage 0 on " in narrow.stdout and "memory used / capacity" in narrow.stdout  # one block a stage
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 80
    wide = nndeploy(*args, "--wide", env={"NNDEPLOY_COLUMNS": "80"})
    assert wide.returncode == 0 and "stage 0 on " not in wide.stdout  # the table, however wide
    assert max(len(line) for line in wide.stdout.splitlines()) > 80
