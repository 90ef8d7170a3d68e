"""nndeploy deploy: Kubernetes manifests for every example cluster, validated offline, and --check."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_cli import assert_user_error, nndeploy

from conftest import EXAMPLES

CLUSTERS = sorted((EXAMPLES / "clusters").glob("*.yaml"))
MIB = 1024**2


def fake_build(plan_path: Path) -> Path:
    """A build folder next to `plan_path` whose manifest.json has targets/artifacts/manifest.py's schema, with
    one small file per stage standing in for the compiled artifact."""
    build = plan_path.parent
    plan = json.loads(plan_path.read_text())
    devices = {d["name"]: d for d in plan["cluster"]["devices"]}
    stages = []
    for stage in plan["stages"]:
        artifact = build / f"stage_{stage['index']}.so"
        artifact.write_bytes(f"stage {stage['index']}".encode())
        stages.append(
            {
                "stage": stage["index"],
                "device": stage["device"],
                "device_arch": devices[stage["device"]]["arch"],
                "status": "built",
                "artifact": {
                    "stage": stage["index"],
                    "target": devices[stage["device"]]["tvm_target"],
                    "path": artifact.name,
                    "sha256": hashlib.sha256(artifact.read_bytes()).hexdigest(),
                    "inputs": stage["inputs"],
                    "outputs": stage["outputs"],
                    "tvm_version": "0.27.0.post1",
                    "options": {},
                    "fallback": None,
                },
                "build_seconds": 0.0,
                "cached": False,
                "error": None,
            }
        )
    manifest = {
        "schema_version": "1.0",
        "plan_file": plan_path.name,
        "model_path": plan["model_path"],
        "model_sha256": plan["model_sha256"],
        "tvm_version": "0.27.0.post1",
        "stages": stages,
    }
    (build / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return build


@pytest.fixture(scope="module", params=CLUSTERS, ids=lambda p: p.stem)
def deployed(request, example_models, tmp_path_factory) -> tuple[dict[str, Any], Path]:
    """camera_cnn planned on one example cluster, a consistent fake build, and `nndeploy deploy --check`."""
    folder = tmp_path_factory.mktemp(request.param.stem)
    plan_path = folder / "build" / "plan.json"
    done = nndeploy("plan", example_models["camera_cnn"], "--cluster", request.param, "-o", plan_path)
    assert done.returncode == 0, done.stderr
    build = fake_build(plan_path)
    k8s = folder / "k8s"
    done = nndeploy("deploy", build, "-o", k8s, "--namespace", "ml", "--image", "reg.io/rt:1", "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every object is valid" in done.stdout
    return json.loads(plan_path.read_text()), k8s


def documents(k8s: Path) -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in k8s.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            found[(doc["kind"], doc.get("metadata", {}).get("name", ""))] = doc
    return found


def test_every_document_validates_offline(deployed) -> None:
    import kubernetes_validate

    from nndeploy.deploy.validate import validate_documents

    _, k8s = deployed
    docs = documents(k8s)
    for (kind, _), doc in docs.items():
        if kind != "Kustomization":
            kubernetes_validate.validate(doc, "1.33.0", strict=True)
    assert (
        validate_documents([("x", d) for (k, _), d in docs.items() if k != "Kustomization"], "1.33.0") == []
    )
    assert (
        "alias" not in (k8s / "stage-0.yaml").read_text() and "&id" not in (k8s / "stage-0.yaml").read_text()
    )


def test_stages_are_wired_in_plan_order(deployed) -> None:
    plan, k8s = deployed
    docs = documents(k8s)
    count = len(plan["stages"])
    for index in range(count):
        command = docs[("Deployment", f"camera-cnn-stage-{index}")]["spec"]["template"]["spec"]["containers"][
            0
        ]["command"]
        assert command[:5] == ["nndeploy", "worker", "/build", "--stage", str(index)]
        if index + 1 < count:
            downstream = command[command.index("--downstream") + 1]
            assert downstream == f"camera-cnn-stage-{index + 1}.ml.svc.cluster.local:50051"
        else:
            assert "--downstream" not in command
        service = docs[("Service", f"camera-cnn-stage-{index}")]
        assert service["spec"]["ports"] == [
            {"name": "grpc", "port": 50051, "targetPort": "grpc", "protocol": "TCP"},
            # without TLS between stages: the side connections for large tensors (runtime/bulk.py)
            {"name": "side", "port": 50052, "targetPort": "side", "protocol": "TCP"},
        ]
        worker = docs[("Deployment", f"camera-cnn-stage-{index}")]["spec"]["template"]["spec"]["containers"][
            0
        ]
        assert command[command.index("--side-port") + 1] == "50052"
        assert {"name": "side", "containerPort": 50052, "protocol": "TCP"} in worker["ports"]
    endpoint = docs[("Deployment", "camera-cnn-endpoint")]["spec"]["template"]["spec"]["containers"][0][
        "command"
    ]
    stages = [endpoint[i + 1] for i, arg in enumerate(endpoint) if arg == "--stage"]
    assert stages == [f"camera-cnn-stage-{i}.ml.svc.cluster.local:50051" for i in range(count)]
    assert endpoint[endpoint.index("--advertise") + 1] == "camera-cnn-endpoint.ml.svc.cluster.local:8001"
    assert endpoint[endpoint.index("--side-port") + 1] == "8003"
    endpoint_service = docs[("Service", "camera-cnn-endpoint")]
    assert {p["name"]: p["port"] for p in endpoint_service["spec"]["ports"]}["side"] == 8003


def test_placement_resources_and_images_follow_the_devices(deployed) -> None:
    plan, k8s = deployed
    docs = documents(k8s)
    devices = {d["name"]: d for d in plan["cluster"]["devices"]}
    for stage in plan["stages"]:
        device = devices[stage["device"]]
        deployment = docs[("Deployment", f"camera-cnn-stage-{stage['index']}")]
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert pod.get("nodeSelector", {}) == device["node_labels"]
        assert (
            deployment["spec"]["selector"]["matchLabels"].items()
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        )
        memory = container["resources"]["requests"]["memory"]
        assert re.fullmatch(r"\d+Mi", memory) and int(memory[:-2]) * MIB >= stage["mem_bytes"]
        limits = container["resources"].get("limits", {})
        if device["kind"] == "gpu":
            assert limits.get("nvidia.com/gpu") == "1"
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
                "tolerations"
            ]
            assert container["image"].startswith("reg.io/rt:1-cuda")
        else:
            assert "nvidia.com/gpu" not in limits and "tolerations" not in pod
            suffix = "-arm64" if device["arch"] == "aarch64" else "-amd64"
            assert container["image"] == "reg.io/rt:1" + suffix
        assert container["readinessProbe"]["grpc"] == {"port": 50051}
        assert container["livenessProbe"]["grpc"] == {"port": 50051}
        assert pod["terminationGracePeriodSeconds"] == 30
        init = pod["initContainers"][0]
        assert init["command"][:2] == ["sha256sum", "--check"]
        sums = docs[("ConfigMap", "camera-cnn-plan")]["data"][f"stage-{stage['index']}.sha256"]
        assert f"  stage_{stage['index']}.so" in sums and "  manifest.json" in sums
        claim = next(v for v in pod["volumes"] if v["name"] == "build")["persistentVolumeClaim"]
        assert claim == {"claimName": "nndeploy-build", "readOnly": True}
    assert docs[("PersistentVolumeClaim", "nndeploy-build")]["spec"]["accessModes"] == ["ReadOnlyMany"]


def test_network_policies_allow_only_upstream(deployed) -> None:
    plan, k8s = deployed
    docs = documents(k8s)
    for index in range(len(plan["stages"])):
        policy = docs[("NetworkPolicy", f"camera-cnn-stage-{index}")]["spec"]
        assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == f"stage-{index}"
        assert policy["policyTypes"] == ["Ingress"]
        (rule,) = policy["ingress"]
        peers = [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in rule["from"]]
        assert peers == (["endpoint"] if index == 0 else [f"stage-{index - 1}", "endpoint"])
        assert rule["ports"] == [{"protocol": "TCP", "port": 50051}, {"protocol": "TCP", "port": 50052}]
    endpoint = docs[("NetworkPolicy", "camera-cnn-endpoint")]["spec"]
    last = f"stage-{len(plan['stages']) - 1}"
    from_last = [r for r in endpoint["ingress"] if r.get("from")]
    assert from_last[0]["ports"] == [{"protocol": "TCP", "port": 8001}, {"protocol": "TCP", "port": 8003}]
    froms = [r.get("from") for r in endpoint["ingress"]]
    assert None in froms  # clients from anywhere on 8001
    assert [
        {"podSelector": {"matchLabels": docs[("Service", "camera-cnn-" + last)]["spec"]["selector"]}}
    ] in froms


def test_kustomization_lists_every_file(deployed) -> None:
    _, k8s = deployed
    kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization" and kustomization["namespace"] == "ml"
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in k8s.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    assert "kubectl -n ml cp build/." in (k8s / "README.md").read_text()


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ("component: stage-0\n  ports:", "component: stage-9\n  ports:", "selects no"),
        ("component: stage-0\n  template:", "component: stage-9\n  template:", "does not match"),
        ("memory: 512Mi", "memory: 512 megs", "quantity"),
        ("replicas: 1", "replicas: one", "replicas"),
    ],
)
def test_check_reports_a_tampered_file_on_one_line(deployed, tmp_path: Path, old, new, fragment) -> None:
    _, k8s = deployed
    for path in k8s.iterdir():
        (tmp_path / path.name).write_text(path.read_text())
    target = next(p for p in sorted(tmp_path.glob("*.yaml")) if old in p.read_text())
    target.write_text(target.read_text().replace(old, new, 1))
    done = nndeploy("deploy", "--check", tmp_path)
    assert_user_error(done, fragment)
    assert f"FAIL {tmp_path / target.name}" in done.stdout


def test_check_reports_a_file_missing_from_the_kustomization(deployed, tmp_path: Path) -> None:
    _, k8s = deployed
    for path in k8s.iterdir():
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "extra.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert_user_error(nndeploy("deploy", "--check", tmp_path), "extra.yaml is not listed")


def test_bad_inputs_are_one_line_errors(example_models, tmp_path: Path) -> None:
    assert_user_error(nndeploy("deploy", tmp_path, "-o", tmp_path / "k8s"), "no manifest.json")
    plan_path = tmp_path / "build" / "plan.json"
    cluster = EXAMPLES / "clusters" / "two-servers.yaml"
    assert (
        nndeploy("plan", example_models["camera_cnn"], "--cluster", cluster, "-o", plan_path).returncode == 0
    )
    build = fake_build(plan_path)
    assert_user_error(nndeploy("deploy", build, "-o", tmp_path / "k8s", "--name", "Bad_Name"), "--name")
    assert_user_error(nndeploy("deploy", build, "-o", tmp_path / "k8s", "--namespace", "-ml"), "--namespace")
    assert_user_error(
        nndeploy("deploy", build, "-o", tmp_path / "k8s", "--tls-secret", "Bad_Secret"), "--tls-secret"
    )
    manifest = json.loads((build / "manifest.json").read_text())
    manifest["stages"][0]["artifact"] = None
    manifest["stages"][0]["status"] = "failed"
    (build / "manifest.json").write_text(json.dumps(manifest))
    assert_user_error(nndeploy("deploy", build, "-o", tmp_path / "k8s"), "failed to build")


@pytest.mark.slow
def test_real_compile_then_deploy_edge_camera_server(example_models, tmp_path: Path) -> None:
    build = tmp_path / "build"
    cluster = EXAMPLES / "clusters" / "edge-camera-server.yaml"
    done = nndeploy("plan", example_models["camera_cnn"], "--cluster", cluster, "-o", build / "plan.json")
    assert done.returncode == 0, done.stderr
    done = nndeploy("compile", build / "plan.json", "-o", build, "--jobs", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    k8s = tmp_path / "k8s"
    done = nndeploy("deploy", build, "-o", k8s, "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((build / "manifest.json").read_text())
    sums = documents(k8s)[("ConfigMap", "camera-cnn-plan")]["data"]["SHA256SUMS"]
    for stage in manifest["stages"]:
        artifact = build / stage["artifact"]["path"]
        assert f"{hashlib.sha256(artifact.read_bytes()).hexdigest()}  {artifact.name}" in sums
    assert f"{hashlib.sha256((build / 'plan.json').read_bytes()).hexdigest()}  plan.json" in sums


def test_limits_budgets_scraping_and_the_endpoint_where_results_go(deployed) -> None:
    plan, k8s = deployed
    docs = documents(k8s)
    devices = {d["name"]: d for d in plan["cluster"]["devices"]}
    for stage in plan["stages"]:
        device = devices[stage["device"]]
        name = f"camera-cnn-stage-{stage['index']}"
        deployment = docs[("Deployment", name)]
        resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
        request, limit = (int(resources[k]["memory"][:-2]) for k in ("requests", "limits"))
        assert limit == math.ceil(request * 2.0)  # the documented headroom
        cores = (device.get("tvm_target") or {}).get("num-cores", 2)
        assert resources["limits"]["cpu"] == str(cores) and resources["requests"]["cpu"] == "1"
        budget = docs[("PodDisruptionBudget", name)]["spec"]
        assert budget["minAvailable"] == 1 and budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert budget["selector"]["matchLabels"].items() <= pod_labels.items()
    endpoint = docs[("Deployment", "camera-cnn-endpoint")]["spec"]["template"]
    assert endpoint["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9001",
        "prometheus.io/path": "/metrics",
    }
    assert set(endpoint["spec"]["containers"][0]["resources"]["limits"]) == {"cpu", "memory"}
    sink = devices[plan["cluster"]["sink"]]  # output_to: where the results go
    assert endpoint["spec"].get("nodeSelector", {}) == sink["node_labels"]
    assert not any(kind == "ServiceMonitor" for kind, _ in docs)  # only on request


def test_service_monitor_on_request_and_checked(deployed, tmp_path: Path) -> None:
    _, k8s = deployed
    build = k8s.parent / "build"
    out = tmp_path / "k8s-monitored"
    done = nndeploy("deploy", build, "-o", out, "--namespace", "ml", "--service-monitor", "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    monitor = documents(out)[("ServiceMonitor", "camera-cnn-endpoint")]
    service = documents(out)[("Service", "camera-cnn-endpoint")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    text = (out / "endpoint.yaml").read_text().replace("interval: 15s", "interval: every 15 seconds")
    (out / "endpoint.yaml").write_text(text)
    done = nndeploy("deploy", "--check", out)
    assert done.returncode != 0
    assert "ServiceMonitor/camera-cnn-endpoint" in done.stdout + done.stderr
    assert "interval" in done.stdout + done.stderr


def test_ray_variant_replaces_the_stage_deployments(deployed, tmp_path: Path) -> None:
    plan, k8s = deployed
    build = k8s.parent / "build"
    ray_k8s = tmp_path / "k8s-ray"
    done = nndeploy("deploy", build, "-o", ray_k8s, "--namespace", "ml", "--ray", "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = {kind for kind, _ in documents(ray_k8s)}
    assert "RayCluster" in kinds and "Deployment" not in kinds
    cluster = next(doc for (kind, _), doc in documents(ray_k8s).items() if kind == "RayCluster")
    groups = {g["groupName"] for g in cluster["spec"]["workerGroupSpecs"]}
    assert len(groups) == len({s["device"] for s in plan["stages"]})
    listed = yaml.safe_load((ray_k8s / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in ray_k8s.glob("*.yaml") if p.name != "kustomization.yaml")


def test_ray_variant_is_on_par_checks_policies_and_secrets(deployed, tmp_path: Path) -> None:
    _, k8s = deployed
    build = k8s.parent / "build"
    out = tmp_path / "k8s-ray-secured"
    secured = ("--endpoint-tls-secret", "api-tls", "--client-certs", "--token-secret", "api-token")
    secured += ("--tls-secret", "stage-tls")
    done = nndeploy("deploy", build, "-o", out, "--namespace", "ml", "--ray", *secured, "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    docs = documents(out)
    cluster = next(doc for (kind, _), doc in docs.items() if kind == "RayCluster")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    pods = [head] + [g["template"]["spec"] for g in cluster["spec"]["workerGroupSpecs"]]
    for pod in pods:  # every Ray pod checks the build on its volume before Ray starts
        (verify,) = pod["initContainers"]
        assert verify["command"] == ["sha256sum", "--check", "--strict", "/etc/nndeploy/SHA256SUMS"]
        assert {v["name"] for v in pod["volumes"]} >= {"build", "config"}
    serve = next(c for c in head["containers"] if c["name"] == "serve")
    args = serve["args"]
    assert args[args.index("--tls-cert") + 1] == "/etc/nndeploy-endpoint-tls/tls.crt"
    assert args[args.index("--client-ca") + 1] == "/etc/nndeploy-endpoint-tls/ca.crt"
    assert args[args.index("--auth-token-file") + 1] == "/etc/nndeploy-token/token"
    assert {m["name"] for m in serve["volumeMounts"]} >= {"endpoint-tls", "token", "tls"}
    # Mutual TLS between stages: serve (the endpoint) and every Ray worker, where the stage actors run, read
    # the stage Secret at the same path.
    assert args[args.index("--tls-dir") + 1] == "/etc/nndeploy-tls"
    for group in cluster["spec"]["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        assert {"name": "tls", "secret": {"secretName": "stage-tls", "defaultMode": 0o440}} in pod["volumes"]
        (worker,) = pod["containers"]
        assert {"name": "tls", "mountPath": "/etc/nndeploy-tls", "readOnly": True} in worker["volumeMounts"]
    assert "tcpSocket" in serve["readinessProbe"]  # client certificates: the kubelet can only check the port
    readme = " ".join((out / "README.md").read_text().split())  # how to apply and reach this variant
    assert "svc/camera-cnn-serve" in readme and "ray.io/node-type=head" in readme
    assert "Deployment + ClusterIP" not in readme and "first DNS name" in readme
    policies = {name: doc["spec"] for (kind, name), doc in docs.items() if kind == "NetworkPolicy"}
    ray_only = policies["camera-cnn-ray"]
    assert ray_only["podSelector"]["matchLabels"] == {"ray.io/cluster": "camera-cnn"}
    assert ray_only["ingress"] == [
        {"from": [{"podSelector": {"matchLabels": {"ray.io/cluster": "camera-cnn"}}}]}
    ]
    clients = policies["camera-cnn-serve"]
    assert clients["podSelector"]["matchLabels"]["ray.io/node-type"] == "head"
    assert [p["port"] for p in clients["ingress"][0]["ports"]] == [8001, 8000, 9001]


def test_tls_secret_wires_mutual_tls_between_stages(deployed, tmp_path: Path) -> None:
    plan, k8s = deployed
    tls_k8s = tmp_path / "k8s-tls"
    done = nndeploy(
        "deploy",
        k8s.parent / "build",
        "-o",
        tls_k8s,
        "--namespace",
        "ml",
        "--tls-secret",
        "stage-tls",
        "--check",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    docs = documents(tls_k8s)
    for (kind, _name), doc in docs.items():
        if kind != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        assert {"name": "tls", "secret": {"secretName": "stage-tls", "defaultMode": 0o440}} in pod["volumes"]
        command = pod["containers"][0]["command"]
        assert command[command.index("--tls-dir") + 1] == "/etc/nndeploy-tls"
        if "--stage" in command and command[1] == "endpoint":
            assert command[command.index("--advertise") + 1].endswith(":8002")
    endpoint_service = next(
        doc for (kind, name), doc in docs.items() if kind == "Service" and name.endswith("-endpoint")
    )
    assert {p["name"]: p["port"] for p in endpoint_service["spec"]["ports"]}["sink"] == 8002
    policy = next(
        doc for (kind, name), doc in docs.items() if kind == "NetworkPolicy" and name.endswith("-endpoint")
    )
    last = f"stage-{len(plan['stages']) - 1}"
    from_last = [r for r in policy["spec"]["ingress"] if r.get("from")]
    assert from_last[0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == last
    assert from_last[0]["ports"] == [{"protocol": "TCP", "port": 8002}]  # with TLS: no side connections
    assert all(
        "--side-port" not in doc["spec"]["template"]["spec"]["containers"][0]["command"]
        for (kind, _), doc in docs.items()
        if kind == "Deployment"
    )


def test_pods_run_as_non_root_with_a_read_only_root_filesystem(deployed) -> None:
    _, k8s = deployed
    for (kind, name), doc in documents(k8s).items():
        if kind != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
        assert {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}} in pod["volumes"]
        for container in pod["containers"] + pod["initContainers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {
                "drop": ["ALL"]
            }
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_endpoint_tls_and_token_come_from_secrets(deployed, tmp_path: Path) -> None:
    _, k8s = deployed
    build = k8s.parent / "build"
    out = tmp_path / "k8s-secured"
    done = nndeploy(
        "deploy", build, "-o", out, "--endpoint-tls-secret", "edge-tls", "--client-certs",
        "--token-secret", "api-token", "--check",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    deployments = {name: doc for (kind, name), doc in documents(out).items() if kind == "Deployment"}
    endpoint = next(doc for name, doc in deployments.items() if name.endswith("-endpoint"))
    pod = endpoint["spec"]["template"]["spec"]
    container = pod["containers"][0]
    command = container["command"]
    assert command[command.index("--tls-cert") + 1] == "/etc/nndeploy-endpoint-tls/tls.crt"
    assert command[command.index("--tls-key") + 1] == "/etc/nndeploy-endpoint-tls/tls.key"
    assert command[command.index("--client-ca") + 1] == "/etc/nndeploy-endpoint-tls/ca.crt"
    assert command[command.index("--auth-token-file") + 1] == "/etc/nndeploy-token/token"
    assert command[command.index("--sink-port") + 1] == "8002"  # results no longer share the TLS port
    assert command[command.index("--advertise") + 1].endswith(":8002")
    assert {"name": "token", "mountPath": "/etc/nndeploy-token", "readOnly": True} in container[
        "volumeMounts"
    ]
    token_volume = next(v for v in pod["volumes"] if v["name"] == "token")
    assert token_volume["secret"] == {
        "secretName": "api-token", "items": [{"key": "token", "path": "token"}], "defaultMode": 0o440,
    }  # fmt: skip
    assert "tcpSocket" in container["readinessProbe"]  # the kubelet's gRPC probe speaks no TLS
    for name, doc in deployments.items():
        if name.endswith("-endpoint"):
            continue
        volumes = [v["name"] for v in doc["spec"]["template"]["spec"]["volumes"]]
        assert "token" not in volumes and "endpoint-tls" not in volumes  # stages never see them
    assert_user_error(
        nndeploy("deploy", build, "-o", tmp_path / "x", "--client-certs"), "--endpoint-tls-secret"
    )
