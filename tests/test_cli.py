"""The command line as a user runs it: real subprocesses, exit codes, one-line errors, files written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from models import chain_model, dynamic_batch_model, light_model_path

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ROOT / "examples" / "clusters"


def nndeploy(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter, as a user would (`env`: variables added to this one's)."""
    return subprocess.run(
        [sys.executable, "-m", "nndeploy", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env=None if env is None else {**os.environ, **env},
    )


def assert_user_error(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit code 2, exactly one line on stderr starting with 'error:', no traceback."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in done.stderr + done.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_version_names_nndeploy_and_what_it_runs_on() -> None:
    from nndeploy import __version__

    done = nndeploy("--version")
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert (
        line.startswith(f"nndeploy {__version__} (") and "apache-tvm 0.27" in line and "onnxruntime" in line
    )


def test_devices_and_plan_print_json_on_request(example_models, tmp_path: Path) -> None:
    import json

    done = nndeploy("devices", "--json")
    assert done.returncode == 0, done.stderr
    profiles = {entry["profile"]: entry for entry in json.loads(done.stdout)}
    server = profiles["x86-avx512-server"]
    assert server["arch"] == "x86_64" and server["tvm_target"]["kind"] == "llvm"
    assert server["peak_gflops"]["float32"] > 0 and server["mem_bytes"] > 0
    cluster = Path(__file__).resolve().parents[1] / "examples" / "clusters" / "edge-camera-server.yaml"
    plan = tmp_path / "plan.json"
    done = nndeploy("plan", example_models["camera_cnn"], "--cluster", cluster, "-o", plan, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == json.loads(plan.read_text())  # stdout holds the JSON alone
    assert "plan written to" in done.stderr


def test_devices_lists_the_registry() -> None:
    done = nndeploy("devices")
    assert done.returncode == 0, done.stderr
    for name in (
        "x86-avx2-server",
        "x86-avx512-server",
        "raspberry-pi-5",
        "jetson-orin-nano-cpu",
        "jetson-orin-nano-gpu",
        "nvidia-t4",
        "nvidia-l4",
        "nvidia-a100",
        "nvidia-h100",
    ):
        assert name in done.stdout


def test_plan_split_and_drawings_on_the_shipped_example(example_models, tmp_path: Path) -> None:
    plan_path = tmp_path / "plan.json"
    done = nndeploy(
        "plan",
        example_models["camera_cnn"],
        "--cluster",
        CLUSTERS / "edge-camera-server.yaml",
        "-o",
        plan_path,
        "--graph",
        tmp_path / "plan.svg",
    )
    assert done.returncode == 0, done.stderr
    # A table, or (when it does not fit the terminal) one block per stage: the same fields either way.
    for header in ("stage", "camera (raspberry-pi-5)", "compute ms", "transfer ms", "memory used"):
        assert header in done.stdout
    assert "predicted latency" in done.stdout and "throughput" in done.stdout
    data = json.loads(plan_path.read_text())
    assert data["schema_version"] == "1.0" and data["stages"]
    svg = (tmp_path / "plan.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert data["stages"][0]["nodes"][0] in svg  # the drawing names the real nodes
    for suffix in (".dot", ".html"):
        again = nndeploy(
            "plan",
            example_models["camera_cnn"],
            "--cluster",
            CLUSTERS / "two-servers.yaml",
            "-o",
            tmp_path / "p2.json",
            "--graph",
            tmp_path / f"plan{suffix}",
        )
        assert again.returncode == 0, again.stderr
    assert (tmp_path / "plan.dot").read_text().startswith("digraph")
    assert "<svg" in (tmp_path / "plan.html").read_text()
    done = nndeploy("split", plan_path, "-o", tmp_path / "stages")
    assert done.returncode == 0, done.stderr
    stages = sorted((tmp_path / "stages").glob("stage_*.onnx"))
    assert len(stages) == len(data["stages"])


def test_every_example_cluster_plans_resnet50(tmp_path: Path) -> None:
    clusters = sorted(CLUSTERS.glob("*.yaml"))
    assert len(clusters) >= 3
    for cluster in clusters:
        done = nndeploy(
            "plan",
            light_model_path("resnet50"),
            "--cluster",
            cluster,
            "-o",
            tmp_path / f"{cluster.stem}.json",
        )
        assert done.returncode == 0, (cluster.name, done.stderr)
        assert json.loads((tmp_path / f"{cluster.stem}.json").read_text())["latency_ms"] > 0


def test_dynamic_model_needs_and_takes_input_shapes(tmp_path: Path) -> None:
    path = tmp_path / "dynamic.onnx"
    onnx.save(dynamic_batch_model(), path)
    cluster = CLUSTERS / "two-servers.yaml"
    assert_user_error(
        nndeploy("plan", path, "--cluster", cluster, "-o", tmp_path / "p.json"), "--input-shape"
    )
    name = dynamic_batch_model().graph.input[0].name
    done = nndeploy("plan", path, "--cluster", cluster, "-o", tmp_path / "p.json", "--batch", "8")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "p.json").read_text())["input_shapes"][name][0] == 8
    assert_user_error(
        nndeploy("plan", path, "--cluster", cluster, "--input-shape", "oops"), "--input-shape 'oops'"
    )


@pytest.mark.parametrize(
    ("setup", "fragments"),
    [
        ("missing_model", ("no such file",)),
        ("text_model", ("not.onnx",)),
        ("missing_cluster", ("nope.yaml",)),
        ("empty_cluster", ("devices",)),
        ("bad_link", ("unknown device 'gpu9'",)),
        ("typo_profile", ("jetsn-orin", "did you mean")),
        ("bad_graph_suffix", ("plan.png",)),
        ("missing_plan", ("no such plan file",)),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(setup: str, fragments: tuple[str, ...], tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    onnx.save(chain_model(), model)
    cluster = CLUSTERS / "two-servers.yaml"
    args: list[str | Path] = ["plan", model, "--cluster", cluster, "-o", tmp_path / "p.json"]
    if setup == "missing_model":
        args[1] = tmp_path / "missing.onnx"
    elif setup == "text_model":
        args[1] = tmp_path / "not.onnx"
        args[1].write_text("this is not a model\n")
    elif setup == "missing_cluster":
        args[3] = tmp_path / "nope.yaml"
    elif setup in ("empty_cluster", "bad_link", "typo_profile"):
        text = {
            "empty_cluster": "devices: []\n",
            "bad_link": "devices:\n  - {name: cpu, profile: x86-avx2-server}\n"
            "links:\n  - {between: [cpu, gpu9], gbps: 10, latency_ms: 0.1}\n",
            "typo_profile": "devices:\n  - {name: cpu, profile: x86-avx2-server}\n"
            "  - {name: gpu, profile: jetsn-orin}\n",
        }[setup]
        args[3] = tmp_path / "cluster.yaml"
        args[3].write_text(text)
    elif setup == "bad_graph_suffix":
        args += ["--graph", tmp_path / "plan.png"]
    elif setup == "missing_plan":
        args = ["split", tmp_path / "missing.json"]
    assert_user_error(nndeploy(*args), *fragments)


def test_split_refuses_a_changed_model(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    onnx.save(chain_model(), model)
    assert (
        nndeploy(
            "plan", model, "--cluster", CLUSTERS / "two-servers.yaml", "-o", tmp_path / "p.json"
        ).returncode
        == 0
    )
    onnx.save(dynamic_batch_model(), model)
    assert_user_error(nndeploy("split", tmp_path / "p.json", "-o", tmp_path / "stages"), "sha256")
    assert not (tmp_path / "stages").exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    done = nndeploy("--debug", "plan", tmp_path / "missing.onnx", "--cluster", CLUSTERS / "two-servers.yaml")
    assert done.returncode != 0 and "Traceback" in done.stderr


def test_profile_links_needs_a_ray_cluster(tmp_path: Path) -> None:
    cluster = Path(__file__).resolve().parents[1] / "examples" / "clusters" / "two-servers.yaml"
    done = nndeploy("profile", "--links", "--cluster", cluster, "-o", tmp_path / "measured")
    assert_user_error(done, "--links", "--address")
    assert not (tmp_path / "measured").exists()
