"""KubeRay output of `nndeploy deploy`: a RayCluster (ray.io/v1) with one worker group per stage device, the
`nndeploy serve` endpoint beside the Ray head, and a Service for it; plus the schema check for RayClusters.

For users who already run Ray on Kubernetes with the KubeRay operator. KubeRay starts `ray start` in every
pod (the head and one worker pod per device); each worker declares its device's custom resource
`nndeploy-device-<name>`, so `nndeploy serve` (a second container in the head pod, sharing its /tmp/ray so it
can attach to the local raylet with `--address auto`) places each stage's actor on its device's node.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from nndeploy.deploy.operations import endpoint_readiness, network_policy
from nndeploy.deploy.options import (
    BUILD_MOUNT,
    ENDPOINT_PORT,
    ENDPOINT_TLS_MOUNT,
    HTTP_PORT,
    METRICS_PORT,
    TLS_MOUNT,
    TOKEN_MOUNT,
    DeployOptions,
    image_for,
    image_variant,
)
from nndeploy.deploy.security import container_security, pod_security
from nndeploy.deploy.volumes import (
    endpoint_secret_mounts,
    endpoint_secret_volumes,
    pod_volumes,
    tls_mounts,
    verify_container,
)
from nndeploy.errors import NNDeployError
from nndeploy.types import device_resource

SCHEMA_PATH = Path(__file__).with_name("kuberay.schema.json")
# KubeRay switches to HTTP health probes (no wget needed in the image) for Ray >= 2.53.
DEFAULT_RAY_VERSION = "2.60.0"
GCS_PORT = 6379
DASHBOARD_PORT = 8265
RAY_CLIENT_PORT = 10001
BUILD_VOLUME = "build"
RAY_TMP_VOLUME = "ray-tmp"  # shared by the Ray head and the serve container: raylet sockets, session files


def dns_label(text: str) -> str:
    """`text` as a DNS-1123 label (lower case, [a-z0-9-], at most 63 characters)."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].strip("-")
    if not label:
        raise NNDeployError(f"cannot make a Kubernetes name from '{text}'")
    return label


def ray_version() -> str:
    """The Ray version KubeRay is told about: the installed one (without importing Ray), else the minimum."""
    try:
        return metadata.version("ray")
    except metadata.PackageNotFoundError:
        return DEFAULT_RAY_VERSION


def _labels(options: DeployOptions, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "nndeploy",
        "app.kubernetes.io/instance": dns_label(options.name),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "nndeploy",
    }


def _build_mount() -> dict[str, Any]:
    return {"name": BUILD_VOLUME, "mountPath": BUILD_MOUNT, "readOnly": True}


def _serve_args(options: DeployOptions) -> list[str]:
    """`nndeploy serve` in the head pod, with the endpoint's TLS and token Secrets when asked for."""
    args = ["serve", BUILD_MOUNT, "--address", "auto", "--host", "0.0.0.0", "--port", str(ENDPOINT_PORT)]
    args += ["--http-port", str(HTTP_PORT), "--metrics-port", str(METRICS_PORT)]
    if options.endpoint_tls_secret:
        args += ["--tls-cert", f"{ENDPOINT_TLS_MOUNT}/tls.crt", "--tls-key", f"{ENDPOINT_TLS_MOUNT}/tls.key"]
        if options.client_certs:
            args += ["--client-ca", f"{ENDPOINT_TLS_MOUNT}/ca.crt"]
    if options.token_secret:
        args += ["--auth-token-file", f"{TOKEN_MOUNT}/token"]
    if options.tls_secret:
        # The same Secret in the serve container and every Ray worker (stage actors read it on their node);
        # peers are verified against the certificate's first DNS name, as actors are dialled by pod IP.
        args += ["--tls-dir", TLS_MOUNT]
    return args


def _head_group(options: DeployOptions) -> dict[str, Any]:
    image = image_for(options, "amd64")
    ready = endpoint_readiness(options)
    serve = {
        "name": "serve",
        "image": image,
        "args": _serve_args(options),
        "ports": [
            {"name": "grpc", "containerPort": ENDPOINT_PORT, "protocol": "TCP"},
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        # The endpoint's health (as the plain manifests probe it: gRPC, or HTTPS / the port with TLS); it
        # answers once every device's worker has joined the cluster.
        "readinessProbe": {**ready, "periodSeconds": 5},
        "startupProbe": {**ready, "periodSeconds": 10, "failureThreshold": 60},
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "volumeMounts": [
            _build_mount(),
            {"name": RAY_TMP_VOLUME, "mountPath": "/tmp/ray"},
            *endpoint_secret_mounts(options),
            *tls_mounts(options),
        ],
        "securityContext": container_security(read_only_root=False),
    }
    head = {
        "name": "ray-head",  # the Ray container must come first: KubeRay adds `ray start --head` to it
        "image": image,
        "ports": [
            {"name": "gcs-server", "containerPort": GCS_PORT},
            {"name": "dashboard", "containerPort": DASHBOARD_PORT},
            {"name": "client", "containerPort": RAY_CLIENT_PORT},
        ],
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
        "volumeMounts": [{"name": RAY_TMP_VOLUME, "mountPath": "/tmp/ray"}],
        "securityContext": container_security(read_only_root=False),
    }
    spec: dict[str, Any] = {
        "securityContext": pod_security(),
        # The build on the volume is the one these manifests were made from (sha256), before Ray starts.
        "initContainers": [verify_container(image, "SHA256SUMS")],
        "containers": [head, serve],
        "volumes": [
            *pod_volumes(options),
            {"name": RAY_TMP_VOLUME, "emptyDir": {}},
            *endpoint_secret_volumes(options),
        ],
    }
    if not options.multiarch:
        spec["nodeSelector"] = {"kubernetes.io/arch": "amd64"}
    return {
        # No CPUs for Ray on the head: stage actors go to the device workers by their custom resources.
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
        "template": {"metadata": {"labels": _labels(options, "ray-head")}, "spec": spec},
    }


def _worker_group(options: DeployOptions, device: dict[str, Any]) -> dict[str, Any]:
    variant = image_variant(device)
    selector = {str(k): str(v) for k, v in (device.get("node_labels") or {}).items()}
    if variant in ("amd64", "arm64") and not options.multiarch:
        selector.setdefault("kubernetes.io/arch", variant)
    container: dict[str, Any] = {
        "name": "ray-worker",
        "image": image_for(options, variant),
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
        "volumeMounts": [_build_mount(), *tls_mounts(options)],
        "securityContext": container_security(read_only_root=False),
    }
    if device.get("kind") == "gpu":
        container["resources"]["limits"]["nvidia.com/gpu"] = "1"
        # Stage actors ask for no Ray GPUs (they are placed by the device resource): keep Ray from hiding the
        # GPU from them with an empty CUDA_VISIBLE_DEVICES.
        container["env"] = [{"name": "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES", "value": "1"}]
    spec: dict[str, Any] = {
        "securityContext": pod_security(),
        "initContainers": [verify_container(container["image"], "SHA256SUMS")],
        "containers": [container],
        "volumes": pod_volumes(options),
    }
    if selector:
        spec["nodeSelector"] = selector
    return {
        "groupName": dns_label(device["name"]),
        "replicas": 1,
        "minReplicas": 1,
        "maxReplicas": 1,
        # Quoted as KubeRay itself writes it: the value lands in a shell `ray start --resources=...` line.
        "rayStartParams": {"resources": "'" + json.dumps({device_resource(device["name"]): 1}) + "'"},
        "template": {"metadata": {"labels": _labels(options, "ray-worker")}, "spec": spec},
    }


def stage_devices(plan: dict[str, Any], manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The cluster devices that run a stage, in cluster.yaml order (a device without a stage gets no pod)."""
    devices = plan["cluster"]["devices"]
    known = {d["name"] for d in devices}
    used = {s["device"] for s in manifest.get("stages") or plan["stages"]}
    missing = sorted(used - known)
    if missing:
        raise NNDeployError(
            f"manifest stages run on device(s) not in the plan's cluster: {', '.join(missing)}"
        )
    return [d for d in devices if d["name"] in used]


def render_kuberay(plan: dict[str, Any], manifest: dict[str, Any], options: DeployOptions) -> list[dict]:
    """The objects to apply on a cluster with the KubeRay operator: RayCluster `<name>` and Service
    `<name>-serve` (KServe v2 gRPC on 8001, HTTP/REST on 8000, metrics on 9001) in front of the head pod's
    serve container.
    The build folder must be on `options.artifacts_pvc`, readable from every device's node (ReadOnlyMany or
    ReadWriteMany)."""
    name = dns_label(options.name)
    meta = {"name": name, "namespace": options.namespace, "labels": _labels(options, "ray-cluster")}
    groups = [_worker_group(options, d) for d in stage_devices(plan, manifest)]
    seen: set[str] = set()
    for group in groups:
        if group["groupName"] in seen:
            raise NNDeployError(f"two devices map to the same worker group name '{group['groupName']}'")
        seen.add(group["groupName"])
    cluster = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": meta,
        "spec": {
            "rayVersion": ray_version(),
            "headGroupSpec": _head_group(options),
            "workerGroupSpecs": groups,
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": f"{name}-serve",
            "namespace": options.namespace,
            "labels": _labels(options, "endpoint"),
        },
        "spec": {
            "type": "ClusterIP",
            # KubeRay labels the head pod with its cluster and node type.
            "selector": {"ray.io/cluster": name, "ray.io/node-type": "head"},
            "ports": [
                {"name": "grpc", "port": ENDPOINT_PORT, "targetPort": "grpc", "appProtocol": "grpc"},
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "appProtocol": "http"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"},
            ],
        },
    }
    cluster_pods = {"ray.io/cluster": name}
    head_pod = {**cluster_pods, "ray.io/node-type": "head"}
    policies = [
        # Ray's own traffic (GCS, raylets, object transfers, stage to stage) only between this cluster's pods.
        network_policy(
            options, f"{name}-ray", _labels(options, "ray-cluster"), cluster_pods,
            [{"from": [{"podSelector": {"matchLabels": cluster_pods}}]}],
        ),
        # Clients reach the endpoint (gRPC, HTTP/REST) and Prometheus its metrics, on the head pod only.
        network_policy(
            options, f"{name}-serve", _labels(options, "endpoint"), head_pod,
            [{"ports": [{"protocol": "TCP", "port": p} for p in (ENDPOINT_PORT, HTTP_PORT, METRICS_PORT)]}],
        ),
    ]  # fmt: skip
    return [cluster, service, *policies]


@cache
def _validator() -> Any:
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _field(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(document)"


def validate_kuberay(doc: dict) -> None:
    """Check a RayCluster against deploy/kuberay.schema.json; NNDeployError naming the first bad field."""
    errors = sorted(
        _validator().iter_errors(doc), key=lambda e: (len(e.absolute_path), list(map(str, e.path)))
    )
    if not errors:
        return
    error = errors[0]
    path = list(error.absolute_path)
    if error.validator == "required":
        missing = next((f for f in error.validator_value if f not in error.instance), None)
        if missing is not None:
            path.append(missing)
            message = "is required"
        else:  # pragma: no cover - jsonschema only reports required for a missing field
            message = error.message
    else:
        message = error.message.splitlines()[0][:200]
    name = doc.get("metadata", {}).get("name", "?") if isinstance(doc, dict) else "?"
    extra = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    raise NNDeployError(f"RayCluster '{name}': {_field(path)}: {message}{extra}")
