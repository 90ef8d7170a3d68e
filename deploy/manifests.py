"""Plan + build manifest -> Kubernetes objects (plain dicts) and the k8s/ folder `kubectl apply -k` takes.

Reads the build folder's plan.json and manifest.json as plain JSON (deploy imports no other package).
Per stage: a Deployment + a ClusterIP Service + a NetworkPolicy + a PodDisruptionBudget; the endpoint: a
Deployment, Service and NetworkPolicy (and a ServiceMonitor on request); one ConfigMap with plan.json,
manifest.json and SHA256SUMS; one PersistentVolumeClaim holding the build folder. Limits, budgets and
monitoring: deploy/operations.py.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from nndeploy.deploy.operations import (
    disruption_budget,
    endpoint_readiness,
    endpoint_resources,
    network_policy,
    scrape_annotations,
    service_monitor,
    stage_resources,
)
from nndeploy.deploy.options import (
    BUILD_MOUNT,
    ENDPOINT_PORT,
    ENDPOINT_TLS_MOUNT,
    HTTP_PORT,
    MAX_NAME,
    METRICS_PORT,
    SIDE_PORT,
    SINK_PORT,
    TLS_MOUNT,
    TOKEN_MOUNT,
    WORKER_PORT,
    WORKER_SIDE_PORT,
    DeployError,
    DeployOptions,
    check_options,
    image_for,
    image_variant,
)
from nndeploy.deploy.security import container_security, pod_security
from nndeploy.deploy.volumes import (
    endpoint_secret_mounts,
    endpoint_secret_volumes,
    pod_volumes,
    shared_mounts,
    tls_mounts,
    verify_container,
)
from nndeploy.paths import inside

MANIFEST_NAME = "manifest.json"
MIB = 1024**2
RUNTIME_OVERHEAD_BYTES = 256 * MIB
GRACE_SECONDS = 30
PRESTOP_SLEEP_SECONDS = 5


def stage_name(options: DeployOptions, index: int) -> str:
    """Deployment/Service/NetworkPolicy name of stage `index`."""
    return f"{options.name}-stage-{index}"


def endpoint_name(options: DeployOptions) -> str:
    """Deployment/Service/NetworkPolicy name of the endpoint."""
    return f"{options.name}-endpoint"


def service_dns(service: str, options: DeployOptions, port: int) -> str:
    """`service.namespace.svc.cluster.local:port`."""
    return f"{service}.{options.namespace}.svc.cluster.local:{port}"


def labels(options: DeployOptions, component: str, device: str | None = None) -> dict[str, str]:
    """The recommended app.kubernetes.io labels (+ the device) every object of one component carries."""
    result = {
        "app.kubernetes.io/name": "nndeploy",
        "app.kubernetes.io/instance": options.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": options.name,
        "app.kubernetes.io/managed-by": "nndeploy",
    }
    if device is not None:
        result["nndeploy.dev/device"] = re.sub(r"[^A-Za-z0-9_.-]", "-", device)[:63]
    return result


def selector(options: DeployOptions, component: str) -> dict[str, str]:
    """The labels that pick one component's pods (a subset of `labels`)."""
    return {
        "app.kubernetes.io/name": "nndeploy",
        "app.kubernetes.io/instance": options.name,
        "app.kubernetes.io/component": component,
    }


def read_build(build_dir: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, bytes]]:
    """plan.json and manifest.json of a build folder as dicts, plus the raw bytes of both files (for the
    SHA256SUMS); one-line DeployError when the folder is not a complete build."""
    manifest_path = build_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise DeployError(
            f"{build_dir}: no {MANIFEST_NAME}; build it with nndeploy compile plan.json -o {build_dir}"
        )
    raw = {MANIFEST_NAME: manifest_path.read_bytes()}
    try:
        manifest = json.loads(raw[MANIFEST_NAME])
        plan_file = manifest["plan_file"]
        stages = manifest["stages"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DeployError(f"{manifest_path}: not a valid nndeploy manifest ({exc}); compile again") from None
    plan_path = inside(build_dir, plan_file)
    if plan_path is None or not plan_path.is_file():
        raise DeployError(f"{manifest_path}: plan file '{plan_file}' is not inside {build_dir}")
    raw[plan_file] = plan_path.read_bytes()
    try:
        plan = json.loads(raw[plan_file])
        plan_stages = plan["stages"]
        devices = {d["name"]: d for d in plan["cluster"]["devices"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise DeployError(f"{plan_path}: not a valid plan ({exc})") from None
    failed = [str(s.get("stage")) for s in stages if not s.get("artifact")]
    if failed:
        raise DeployError(
            f"{manifest_path}: stage(s) {', '.join(failed)} failed to build (no artifact); "
            "fix the build (or use --fallback onnxruntime) before deploying"
        )
    if len(stages) != len(plan_stages) or not plan_stages:
        raise DeployError(
            f"{manifest_path}: {len(stages)} stage(s) built, the plan has {len(plan_stages)}; compile again"
        )
    for built, planned in zip(stages, plan_stages, strict=True):
        if built["stage"] != planned["index"] or built["device"] != planned["device"]:
            raise DeployError(
                f"{manifest_path}: stage {built['stage']} does not match the plan; compile again"
            )
        if planned["device"] not in devices:
            raise DeployError(f"{plan_path}: stage {planned['index']}'s device is not in the cluster")
        artifact = built["artifact"]["path"]
        if Path(artifact).is_absolute() or ".." in Path(artifact).parts:
            raise DeployError(f"{manifest_path}: artifact path '{artifact}' is not inside the build folder")
    return plan, manifest, raw


def endpoint_image(options: DeployOptions, device: dict[str, Any]) -> str:
    """The CPU runtime image for the endpoint on `device`'s node (-arm64 or -amd64)."""
    if options.multiarch:
        return options.image
    host = device.get("tvm_target", {}).get("host") or {}
    aarch64 = device["arch"] == "aarch64" or "aarch64" in str(host.get("mtriple", ""))
    return options.image + ("-arm64" if aarch64 else "-amd64")


def sha256sums(manifest: dict[str, Any], raw: dict[str, bytes]) -> str:
    """`sha256sum -c` input: every artifact (from the manifest) plus plan.json and manifest.json themselves,
    so a pod refuses a volume holding a different build than the one these manifests were made from."""
    lines = [f"{hashlib.sha256(data).hexdigest()}  {name}" for name, data in raw.items()]
    lines += [f"{s['artifact']['sha256']}  {s['artifact']['path']}" for s in manifest["stages"]]
    return "\n".join(lines) + "\n"


def stage_sums_key(index: int) -> str:
    """ConfigMap key with the checksums one stage pod verifies (its artifact + plan + manifest)."""
    return f"stage-{index}.sha256"


def _pod_spec(
    options: DeployOptions,
    image: str,
    container: dict[str, Any],
    sums_key: str,
    device: dict[str, Any] | None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "initContainers": [verify_container(image, sums_key)],
        "containers": [container],
        "volumes": pod_volumes(options),
        "securityContext": pod_security(),
    }
    if device is not None and device.get("node_labels"):
        spec["nodeSelector"] = {str(k): str(v) for k, v in device["node_labels"].items()}
    if device is not None and device["kind"] == "gpu":
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return spec


def _deployment(
    options: DeployOptions,
    name: str,
    component: str,
    device_name: str | None,
    pod: dict[str, Any],
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta_labels = labels(options, component, device_name)
    template: dict[str, Any] = {"labels": meta_labels}
    if annotations:
        template["annotations"] = annotations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": options.namespace, "labels": meta_labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector(options, component)},
            "template": {"metadata": template, "spec": pod},
        },
    }


def _service(
    options: DeployOptions, name: str, component: str, device: str | None, ports: list[tuple[str, int]]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": options.namespace,
            "labels": labels(options, component, device),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector(options, component),
            "ports": [
                {"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}
                for port_name, port in ports
            ],
        },
    }


def _lifecycle() -> dict[str, Any]:
    # Sleep first so the Service's endpoints drop the pod before the process gets SIGTERM and drains.
    return {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}}


def stage_objects(
    options: DeployOptions, plan: dict[str, Any], index: int, device: dict[str, Any]
) -> list[dict[str, Any]]:
    """Deployment, Service and NetworkPolicy of stage `index`."""
    stages = plan["stages"]
    stage = stages[index]
    name, component = stage_name(options, index), f"stage-{index}"
    command = ["nndeploy", "worker", BUILD_MOUNT, "--stage", str(index), "--host", "0.0.0.0"]
    command += ["--port", str(WORKER_PORT)]
    if index + 1 < len(stages):
        command += ["--downstream", service_dns(stage_name(options, index + 1), options, WORKER_PORT)]
    if options.tls_secret:
        command += ["--tls-dir", TLS_MOUNT]
    else:
        command += ["--side-port", str(WORKER_SIDE_PORT)]
    ports = [("grpc", WORKER_PORT)] + ([] if options.tls_secret else [("side", WORKER_SIDE_PORT)])
    resources = stage_resources(int(stage["mem_bytes"]) + RUNTIME_OVERHEAD_BYTES, device)
    # The kubelet's gRPC probes cannot present a client certificate: with mutual TLS, probe the port.
    check = {"tcpSocket": {"port": WORKER_PORT}} if options.tls_secret else {"grpc": {"port": WORKER_PORT}}
    probe = {**check, "periodSeconds": 10, "timeoutSeconds": 5}
    image = image_for(options, image_variant(device))
    container = {
        "name": "worker",
        "image": image,
        "command": command,
        "ports": [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in ports],
        "resources": resources,
        "volumeMounts": shared_mounts() + tls_mounts(options),
        "readinessProbe": {**probe, "initialDelaySeconds": 2},
        "livenessProbe": {**probe, "initialDelaySeconds": 30, "failureThreshold": 3},
        "lifecycle": _lifecycle(),
        "securityContext": container_security(),
    }
    pod = _pod_spec(options, image, container, stage_sums_key(index), device)
    upstream = "endpoint" if index == 0 else f"stage-{index - 1}"
    peers = [upstream] if upstream == "endpoint" else [upstream, "endpoint"]
    meta_labels, match = labels(options, component, stage["device"]), selector(options, component)
    admitted = {
        "from": [{"podSelector": {"matchLabels": selector(options, peer)}} for peer in peers],
        "ports": [{"protocol": "TCP", "port": p} for _, p in ports],
    }
    return [
        _deployment(options, name, component, stage["device"], pod),
        _service(options, name, component, stage["device"], ports),
        network_policy(options, name, meta_labels, match, [admitted]),
        disruption_budget(options, name, meta_labels, match),
    ]


def endpoint_objects(options: DeployOptions, plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Deployment, Service and NetworkPolicy of the KServe v2 endpoint."""
    name, component = endpoint_name(options), "endpoint"
    command = ["nndeploy", "endpoint", BUILD_MOUNT, "--host", "0.0.0.0", "--port", str(ENDPOINT_PORT)]
    command += ["--http-port", str(HTTP_PORT), "--metrics-port", str(METRICS_PORT)]
    separate_sink = bool(options.tls_secret or options.endpoint_tls_secret)
    sink_port = SINK_PORT if separate_sink else ENDPOINT_PORT
    command += ["--advertise", service_dns(name, options, sink_port)]
    if options.tls_secret:
        command += ["--tls-dir", TLS_MOUNT]
    if separate_sink:
        command += ["--sink-port", str(SINK_PORT)]
    side = [] if options.tls_secret else [("side", SIDE_PORT)]
    if side:
        command += ["--side-port", str(SIDE_PORT)]
    if options.endpoint_tls_secret:
        command += [
            "--tls-cert",
            f"{ENDPOINT_TLS_MOUNT}/tls.crt",
            "--tls-key",
            f"{ENDPOINT_TLS_MOUNT}/tls.key",
        ]
        if options.client_certs:
            command += ["--client-ca", f"{ENDPOINT_TLS_MOUNT}/ca.crt"]
    if options.token_secret:
        command += ["--auth-token-file", f"{TOKEN_MOUNT}/token"]
    for index in range(len(plan["stages"])):
        command += ["--stage", service_dns(stage_name(options, index), options, WORKER_PORT)]
    # Where results go (cluster.yaml's output_to): the result is what crosses back to the user.
    sink = next(d for d in plan["cluster"]["devices"] if d["name"] == plan["cluster"]["sink"])
    image = endpoint_image(options, sink)
    ready = endpoint_readiness(options)
    container = {
        "name": "endpoint",
        "image": image,
        "command": command,
        "ports": [
            {"name": "grpc", "containerPort": ENDPOINT_PORT, "protocol": "TCP"},
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
            *([{"name": "sink", "containerPort": SINK_PORT, "protocol": "TCP"}] if separate_sink else []),
            *[{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in side],
        ],
        "resources": endpoint_resources(),
        "volumeMounts": shared_mounts() + tls_mounts(options) + endpoint_secret_mounts(options),
        # Health is SERVING only while every stage is up: right for readiness; liveness only checks the
        # process answers (a stage restarting must not restart the endpoint too). The kubelet's gRPC probe
        # speaks no TLS: with TLS on the client port, readiness asks the HTTPS port's /v2/health/ready
        # (the kubelet does not check the certificate) unless client certificates are required, then it
        # checks the port is open.
        "readinessProbe": {**ready, "periodSeconds": 5, "initialDelaySeconds": 2},
        "livenessProbe": {
            "tcpSocket": {"port": ENDPOINT_PORT},
            "periodSeconds": 10,
            "initialDelaySeconds": 10,
        },
        "lifecycle": _lifecycle(),
        "securityContext": container_security(),
    }
    pod = _pod_spec(options, image, container, "SHA256SUMS", None)
    pod["volumes"] += endpoint_secret_volumes(options)
    if sink.get("node_labels"):
        # On the node of the device results go to (the cluster's sink, output_to), on its CPU.
        pod["nodeSelector"] = {str(k): str(v) for k, v in sink["node_labels"].items()}
    last = f"stage-{len(plan['stages']) - 1}"
    meta_labels, match = labels(options, component), selector(options, component)
    policy = network_policy(
        options,
        name,
        meta_labels,
        match,
        [
            {"ports": [{"protocol": "TCP", "port": p} for p in (ENDPOINT_PORT, HTTP_PORT)]},
            {
                "from": [{"podSelector": {"matchLabels": selector(options, last)}}],
                "ports": [{"protocol": "TCP", "port": p} for p in (sink_port, *(p for _, p in side))],
            },
            {"ports": [{"protocol": "TCP", "port": METRICS_PORT}]},
        ],
    )
    monitors = [service_monitor(options, name, meta_labels, match)] if options.service_monitor else []
    return [
        _deployment(options, name, component, None, pod, scrape_annotations()),
        _service(
            options,
            name,
            component,
            None,
            [
                ("grpc", ENDPOINT_PORT),
                ("http", HTTP_PORT),
                ("metrics", METRICS_PORT),
                *([("sink", SINK_PORT)] if separate_sink else []),
                *side,
            ],
        ),
        policy,
        *monitors,
    ]


def shared_objects(
    options: DeployOptions, plan: dict[str, Any], manifest: dict[str, Any], raw: dict[str, bytes]
) -> list[dict[str, Any]]:
    """The ConfigMap (plan.json, manifest.json, SHA256SUMS, one checksum list per stage) and the PVC."""
    plan_file = manifest["plan_file"]
    own = [f"{hashlib.sha256(data).hexdigest()}  {name}" for name, data in raw.items()]
    data = {
        "plan.json": raw[plan_file].decode("utf-8"),
        "manifest.json": raw[MANIFEST_NAME].decode("utf-8"),
        "SHA256SUMS": sha256sums(manifest, raw),
    }
    for built in manifest["stages"]:
        artifact = built["artifact"]
        data[stage_sums_key(built["stage"])] = (
            "\n".join([*own, f"{artifact['sha256']}  {artifact['path']}"]) + "\n"
        )
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{options.name}-plan",
            "namespace": options.namespace,
            "labels": labels(options, "config"),
        },
        "data": data,
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": options.artifacts_pvc,
            "namespace": options.namespace,
            "labels": labels(options, "build"),
        },
        "spec": {
            "accessModes": ["ReadOnlyMany"],
            "resources": {"requests": {"storage": options.storage_size}},
        },
    }
    return [config, pvc]


def render(build_dir: Path, options: DeployOptions, ray: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Every object for the build, grouped by the file it goes into (file name -> documents)."""
    check_options(options)
    plan, manifest, raw = read_build(build_dir)
    devices = {d["name"]: d for d in plan["cluster"]["devices"]}
    files: dict[str, list[dict[str, Any]]] = {"config.yaml": shared_objects(options, plan, manifest, raw)}
    if ray:
        # The KubeRay variant replaces the per-stage Deployments: Ray places and restarts the stage workers.
        from nndeploy.deploy import kuberay

        files["kuberay.yaml"] = kuberay.render_kuberay(plan, manifest, options)
        return files
    files["endpoint.yaml"] = endpoint_objects(options, plan)
    for stage in plan["stages"]:
        files[f"stage-{stage['index']}.yaml"] = stage_objects(
            options, plan, stage["index"], devices[stage["device"]]
        )
    return files


def default_name(build_dir: Path) -> str:
    """A DNS-1123 name from the build's model file name (camera_cnn.onnx -> camera-cnn)."""
    try:
        model = json.loads((build_dir / MANIFEST_NAME).read_text(encoding="utf-8"))["model_path"]
    except (OSError, ValueError, KeyError, TypeError):
        return "nndeploy"
    name = re.sub(r"[^a-z0-9-]+", "-", Path(str(model)).stem.lower()).strip("-")[:MAX_NAME].strip("-")
    return name or "nndeploy"
