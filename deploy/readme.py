"""The README.md written into a deploy folder: how to fill the build volume and apply the manifests."""

from __future__ import annotations

from typing import Any

from nndeploy.deploy.kuberay import dns_label
from nndeploy.deploy.options import (
    BUILD_MOUNT,
    CONFIG_MOUNT,
    ENDPOINT_PORT,
    HTTP_PORT,
    METRICS_PORT,
    SINK_PORT,
    WORKER_PORT,
    DeployOptions,
)


def readme(options: DeployOptions, files: dict[str, list[dict[str, Any]]]) -> str:
    """How to fill the build volume and apply the folder."""
    ns, pvc, name = options.namespace, options.artifacts_pvc, options.name
    ray = "kuberay.yaml" in files
    overview, apply = _ray_parts(options) if ray else _plain_parts(options, files)
    return f"""# Kubernetes manifests for `{name}` (written by `nndeploy deploy`)

Objects: {", ".join(files)} and kustomization.yaml. Namespace `{ns}`.
{overview}

## 1. Put the build folder on the volume

The artifacts are not in a ConfigMap (too large, and binary): they live on the PersistentVolumeClaim
`{pvc}` ({options.storage_size}, ReadOnlyMany: every stage pod mounts it read-only at {BUILD_MOUNT}, on
different nodes, so it needs a storage class that supports ReadOnlyMany/ReadWriteMany, e.g. NFS,
CephFS, Azure Files, GCP Filestore). Fill it once per build, before the pods start:

```sh
kubectl create namespace {ns} --dry-run=client -o yaml | kubectl apply -f -
kubectl -n {ns} apply -f config.yaml           # the ConfigMap and the PVC
kubectl -n {ns} run {name}-fill --image=busybox:1.36 --restart=Never \\
  --overrides='{{"spec": {{"containers": [{{"name": "fill", "image": "busybox:1.36",
    "command": ["sleep", "3600"], "volumeMounts": [{{"name": "build", "mountPath": "/build"}}]}}],
    "volumes": [{{"name": "build", "persistentVolumeClaim": {{"claimName": "{pvc}"}}}}]}}}}'
kubectl -n {ns} wait --for=condition=Ready pod/{name}-fill
kubectl -n {ns} cp build/. {name}-fill:/build/
kubectl -n {ns} delete pod {name}-fill
```

(If your CSI driver mounts a ReadOnlyMany claim read-only even for this pod, copy the folder to the
share directly, e.g. onto the NFS export behind the PersistentVolume.)

Every pod's init container `verify-artifacts` runs `sha256sum --check` in {BUILD_MOUNT} against the
checksums in the ConfigMap `{name}-plan` (mounted at {CONFIG_MOUNT}): the stage's artifact, plan.json
and manifest.json must be byte-for-byte the build these manifests were made from, or the pod does not
start (`kubectl -n {ns} logs <pod> -c verify-artifacts` says which file differs).

## 2. Apply

{apply}
Check the folder offline with `nndeploy deploy --check .`.
"""


def _plain_parts(options: DeployOptions, files: dict[str, list[dict[str, Any]]]) -> tuple[str, str]:
    """What the plain manifests are, and how to apply and reach them."""
    ns, name = options.namespace, options.name
    stages = sorted(f for f in files if f.startswith("stage-"))
    overview = f"""Each of the {len(stages)} stage(s) is a Deployment + ClusterIP Service (`{name}-stage-<i>`,
port {WORKER_PORT}) running `nndeploy worker /build --stage <i>`, wired to the next stage's Service;
`{name}-endpoint` serves KServe v2 gRPC on {ENDPOINT_PORT} and HTTP/REST on {HTTP_PORT} (metrics on
{METRICS_PORT})."""
    apply = f"""```sh
kubectl apply -k .
kubectl -n {ns} rollout status deploy/{name}-endpoint
kubectl -n {ns} port-forward svc/{name}-endpoint {ENDPOINT_PORT}:{ENDPOINT_PORT} &
nndeploy infer localhost:{ENDPOINT_PORT}
kubectl -n {ns} port-forward svc/{name}-endpoint {HTTP_PORT}:{HTTP_PORT} &
curl -i localhost:{HTTP_PORT}/v2/health/ready && curl localhost:{HTTP_PORT}/v2
```

Stages are pinned to their devices' nodes by `nodeSelector` (the cluster.yaml `labels`); GPU stages ask
for `nvidia.com/gpu: 1` (NVIDIA device plugin) and tolerate the `nvidia.com/gpu` taint. NetworkPolicies
let each stage accept traffic only from its upstream stage (stage 0: from the endpoint) and from the
endpoint (health and stats); the endpoint accepts clients on {ENDPOINT_PORT} (gRPC) and {HTTP_PORT} (HTTP)
and metrics scrapes on {METRICS_PORT}. Between pods, gRPC is plaintext unless deployed with
`--tls-secret NAME`: then every worker and the endpoint's result sink (port {SINK_PORT}) use mutual TLS
with the Secret's tls.crt, tls.key and ca.crt (the certificate's SANs must cover
`*.<namespace>.svc.cluster.local`)."""
    return overview, apply


def _ray_parts(options: DeployOptions) -> tuple[str, str]:
    """What the KubeRay variant is, and how to apply and reach it."""
    ns, name = options.namespace, dns_label(options.name)
    overview = f"""A KubeRay RayCluster `{name}` (needs the KubeRay operator): the head pod runs Ray and
`nndeploy serve` (KServe v2 gRPC on {ENDPOINT_PORT}, HTTP/REST on {HTTP_PORT}, metrics on {METRICS_PORT},
behind the Service `{name}-serve`); one worker group per device declares the device's Ray resource, and
Ray places and restarts each stage's worker there."""
    apply = f"""```sh
kubectl apply -k .
kubectl -n {ns} wait --for=condition=Ready pod -l ray.io/cluster={name},ray.io/node-type=head --timeout=10m
kubectl -n {ns} port-forward svc/{name}-serve {ENDPOINT_PORT}:{ENDPOINT_PORT} &
nndeploy infer localhost:{ENDPOINT_PORT}
kubectl -n {ns} port-forward svc/{name}-serve {HTTP_PORT}:{HTTP_PORT} &
curl -i localhost:{HTTP_PORT}/v2/health/ready && curl localhost:{HTTP_PORT}/v2
```

Worker groups are pinned to their devices' nodes by `nodeSelector` (the cluster.yaml `labels`); the head
pod turns ready once every stage serves (`kubectl -n {ns} logs <head pod> -c serve` says which device's
node has not joined). NetworkPolicies keep Ray's own traffic between this cluster's pods and open only
{ENDPOINT_PORT}, {HTTP_PORT} and {METRICS_PORT} on the head pod. Between the pods, gRPC is plaintext unless
deployed with `--tls-secret NAME`: then the serve container and every Ray worker mount the Secret at the
same path and the endpoint, its result sink and every stage use mutual TLS with its tls.crt, tls.key and
ca.crt. Stage workers are dialled at pod IPs, so each peer is verified against the certificate's first DNS
name, which every certificate of the Secret must carry (any name, e.g. `{name}-stages`)."""
    return overview, apply
