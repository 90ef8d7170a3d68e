"""What a cluster operator's policies expect of the plain manifests: resource limits derived from the plan
(with a stated headroom), NetworkPolicies (the rules are the manifests'), a PodDisruptionBudget per stage,
Prometheus scrape annotations on the endpoint (the one process that serves /metrics) and, on request, a
prometheus-operator ServiceMonitor, checked against a JSON Schema of the ServiceMonitor fields it uses.

Limits, per stage: memory limit = MEMORY_HEADROOM x the request (the request is the plan's memory for the
stage plus the runtime's own); CPU request 1, CPU limit = the threads the stage computes with (the
device's `num-cores` in its TVM target, else DEFAULT_CPU_LIMIT). The endpoint: ENDPOINT_REQUESTS and
ENDPOINT_LIMITS (it decodes requests and results, nothing heavier).
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

from nndeploy.deploy.options import ENDPOINT_PORT, HTTP_PORT, METRICS_PORT, DeployOptions
from nndeploy.errors import NNDeployError

MIB = 1024**2
MEMORY_HEADROOM = 2.0  # allocator slack, up to a queue of in-flight tensors, the gRPC and side buffers
DEFAULT_CPU_LIMIT = 2
ENDPOINT_REQUESTS = {"cpu": "500m", "memory": "512Mi"}
ENDPOINT_LIMITS = {"cpu": "2", "memory": "2Gi"}
MONITORING_API = "monitoring.coreos.com/v1"


def stage_resources(memory_bytes: int, device: dict[str, Any]) -> dict[str, Any]:
    """Requests and limits of a stage's container (see the module docstring)."""
    cores = (device.get("tvm_target") or {}).get("num-cores")
    cpu_limit = int(cores) if isinstance(cores, int) and cores > 0 else DEFAULT_CPU_LIMIT
    request_mib = math.ceil(memory_bytes / MIB)
    resources: dict[str, Any] = {
        "requests": {"cpu": "1", "memory": f"{request_mib}Mi"},
        "limits": {"cpu": str(cpu_limit), "memory": f"{math.ceil(request_mib * MEMORY_HEADROOM)}Mi"},
    }
    if device.get("kind") == "gpu":
        resources["limits"]["nvidia.com/gpu"] = "1"
    return resources


def endpoint_resources() -> dict[str, Any]:
    """Requests and limits of the endpoint's container."""
    return {"requests": dict(ENDPOINT_REQUESTS), "limits": dict(ENDPOINT_LIMITS)}


def scrape_annotations() -> dict[str, str]:
    """The prometheus.io annotations a plain Prometheus (kubernetes_sd, pod role) scrapes by."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
    }


def network_policy(
    options: DeployOptions,
    name: str,
    meta_labels: dict[str, str],
    match: dict[str, str],
    ingress: list[dict[str, Any]],
) -> dict[str, Any]:
    """A NetworkPolicy admitting only the `ingress` rules into the pods `match` selects."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": options.namespace, "labels": meta_labels},
        "spec": {"podSelector": {"matchLabels": match}, "policyTypes": ["Ingress"], "ingress": ingress},
    }


def disruption_budget(
    options: DeployOptions, name: str, meta_labels: dict[str, str], match: dict[str, str]
) -> dict[str, Any]:
    """A PodDisruptionBudget keeping a serving stage's one pod through voluntary disruptions (a node drain
    waits for the operator: scale the pipeline or delete the budget for planned maintenance); a pod that is
    not ready may still be evicted."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": options.namespace, "labels": meta_labels},
        "spec": {
            "minAvailable": 1,
            "selector": {"matchLabels": match},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def service_monitor(
    options: DeployOptions, name: str, meta_labels: dict[str, str], match: dict[str, str]
) -> dict[str, Any]:
    """A prometheus-operator ServiceMonitor scraping the endpoint Service's `metrics` port."""
    return {
        "apiVersion": MONITORING_API,
        "kind": "ServiceMonitor",
        "metadata": {"name": name, "namespace": options.namespace, "labels": meta_labels},
        "spec": {
            "selector": {"matchLabels": match},
            "namespaceSelector": {"matchNames": [options.namespace]},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s", "scheme": "http"}],
        },
    }


_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}


@cache
def _service_monitor_schema() -> dict[str, Any]:
    """The ServiceMonitor fields written here, as prometheus-operator's CRD (monitoring.coreos.com/v1)
    defines them."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": MONITORING_API},
            "kind": {"const": "ServiceMonitor"},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "namespace": {"type": "string"},
                    "labels": _STRINGS,
                },
            },
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "additionalProperties": False,
                "properties": {
                    "selector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"matchLabels": _STRINGS},
                    },
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "any": {"type": "boolean"},
                            "matchNames": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string"},
                                "interval": {"type": "string", "pattern": _DURATION},
                                "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            },
                        },
                    },
                },
            },
        },
    }


def monitoring_errors(doc: dict[str, Any]) -> list[str]:
    """Problems of a monitoring.coreos.com object against the schema above (a kind not written here is
    one)."""
    import jsonschema

    if doc.get("kind") != "ServiceMonitor":
        return [f"no schema for {doc.get('apiVersion')}/{doc.get('kind')}"]
    validator = jsonschema.Draft202012Validator(_service_monitor_schema())
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(top level)'}: {error.message}"
        for error in validator.iter_errors(doc)
    ]


def check_monitoring(doc: dict[str, Any]) -> None:
    """Raise NNDeployError (one line) if a written ServiceMonitor does not fit the schema (a bug here)."""
    problems = monitoring_errors(doc)
    if problems:
        raise NNDeployError(f"ServiceMonitor '{doc['metadata']['name']}': {problems[0]}")


def endpoint_readiness(options: DeployOptions) -> dict[str, Any]:
    """The endpoint's readiness check: gRPC health in plaintext, HTTPS /v2/health/ready with TLS, the
    port alone when clients need certificates (the kubelet has none)."""
    if not options.endpoint_tls_secret:
        return {"grpc": {"port": ENDPOINT_PORT}}
    if options.client_certs:
        return {"tcpSocket": {"port": ENDPOINT_PORT}}
    return {"httpGet": {"path": "/v2/health/ready", "port": HTTP_PORT, "scheme": "HTTPS"}}
