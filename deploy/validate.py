"""Offline checks of emitted Kubernetes objects: the API schemas (kubernetes-validate, strict) plus what a
schema cannot see: DNS-1123 names, quantities, selectors against pod labels, and the kustomization's list.

Every problem is one line `file: Kind/name: message`; nothing here talks to a cluster.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from nndeploy.deploy.options import DNS_1123_LABEL

DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
# Kinds whose names must be DNS-1123 labels (they become DNS names or label values); others: subdomains.
LABEL_NAMED = {"Service", "Deployment", "Namespace"}
Doc = tuple[str, dict[str, Any]]


def _where(file: str, doc: dict[str, Any]) -> str:
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    return f"{file}: {doc.get('kind', '?')}/{meta.get('name', '?')}"


def schema_errors(doc: dict[str, Any], version: str) -> list[str]:
    """Strict OpenAPI-schema problems of one object (CRDs: the KubeRay checker when available)."""
    import kubernetes_validate

    if str(doc.get("apiVersion", "")).startswith("monitoring.coreos.com/"):
        from nndeploy.deploy.operations import monitoring_errors

        return monitoring_errors(doc)
    if str(doc.get("apiVersion", "")).startswith("ray.io/"):
        try:
            from nndeploy.deploy import kuberay
        except ImportError:
            return ["no schema for KubeRay objects in this version (nndeploy.deploy.kuberay is missing)"]
        check = getattr(kuberay, "validate_kuberay", None)
        if check is None:
            return []
        try:
            result = check(doc)
        except Exception as exc:  # the KubeRay checker's own error type
            return [" ".join(str(exc).split())]
        return [str(e) for e in result] if isinstance(result, list | tuple) else []
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path) or "(top level)"
        return [f"{path}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no Kubernetes {version} schema for {doc.get('apiVersion')}/{doc.get('kind')}"]
    except kubernetes_validate.InvalidSchemaError as exc:
        return [f"schema error: {' '.join(str(exc).split())}"]
    return []


def _quantities(doc: dict[str, Any]) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    spec = doc.get("spec") or {}
    if doc.get("kind") == "PersistentVolumeClaim":
        for key, value in ((spec.get("resources") or {}).get("requests") or {}).items():
            found.append((f"spec.resources.requests.{key}", value))
    pod = ((spec.get("template") or {}).get("spec")) or {}
    for group in ("initContainers", "containers"):
        for container in pod.get(group) or []:
            for kind in ("requests", "limits"):
                for key, value in ((container.get("resources") or {}).get(kind) or {}).items():
                    found.append((f"{container.get('name')}.resources.{kind}.{key}", value))
    return found


def _matches(selector: dict[str, str], pod_labels: dict[str, str]) -> bool:
    return all(pod_labels.get(k) == v for k, v in selector.items())


def object_errors(doc: dict[str, Any]) -> list[str]:
    """Problems inside one object that its schema does not catch."""
    errors: list[str] = []
    kind, meta = doc.get("kind"), doc.get("metadata") or {}
    name = str(meta.get("name", ""))
    pattern = DNS_1123_LABEL if kind in LABEL_NAMED else DNS_1123_SUBDOMAIN
    if not pattern.match(name) or len(name) > (63 if kind in LABEL_NAMED else 253):
        errors.append(
            f"metadata.name '{name}' is not a DNS-1123 {'label' if kind in LABEL_NAMED else 'name'}"
        )
    namespace = meta.get("namespace")
    if namespace is not None and not DNS_1123_LABEL.match(str(namespace)):
        errors.append(f"metadata.namespace '{namespace}' is not a DNS-1123 label")
    for path, value in _quantities(doc):
        if isinstance(value, bool) or not (isinstance(value, int | float) or QUANTITY.match(str(value))):
            errors.append(f"{path}: '{value}' is not a Kubernetes quantity")
    if kind == "Deployment":
        spec = doc.get("spec") or {}
        wanted = (spec.get("selector") or {}).get("matchLabels") or {}
        pod_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not wanted:
            errors.append("spec.selector.matchLabels is empty")
        elif not _matches(wanted, pod_labels):
            errors.append(f"spec.selector {wanted} does not match the pod template's labels {pod_labels}")
    return errors


def pod_labels(doc: dict[str, Any]) -> list[dict[str, str]]:
    """The labels of the pods an object makes: a Deployment's template, or a RayCluster's head and worker
    groups (plus the ray.io/* labels the KubeRay operator adds)."""
    spec = doc.get("spec") or {}
    if doc.get("kind") == "Deployment":
        return [((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}]
    if doc.get("kind") != "RayCluster":
        return []
    cluster = {"ray.io/cluster": str((doc.get("metadata") or {}).get("name", ""))}
    head = (spec.get("headGroupSpec") or {}).get("template") or {}
    found = [{**((head.get("metadata") or {}).get("labels") or {}), **cluster, "ray.io/node-type": "head"}]
    for group in spec.get("workerGroupSpecs") or []:
        labels = ((group.get("template") or {}).get("metadata") or {}).get("labels") or {}
        found.append(
            {**labels, **cluster, "ray.io/node-type": "worker", "ray.io/group": str(group.get("groupName"))}
        )
    return found


def cross_errors(docs: list[Doc]) -> list[str]:
    """Problems between objects: Services and NetworkPolicies must select pods some Deployment makes."""
    pods = [labels for _, doc in docs for labels in pod_labels(doc)]
    errors: list[str] = []
    for file, doc in docs:
        spec = doc.get("spec") or {}
        selectors: list[tuple[str, dict[str, str]]] = []
        if doc.get("kind") == "Service":
            selectors.append(("spec.selector", spec.get("selector") or {}))
        elif doc.get("kind") == "NetworkPolicy":
            selectors.append(("spec.podSelector", (spec.get("podSelector") or {}).get("matchLabels") or {}))
            for i, rule in enumerate(spec.get("ingress") or []):
                for j, peer in enumerate(rule.get("from") or []):
                    if "podSelector" in peer:
                        labels = (peer["podSelector"] or {}).get("matchLabels") or {}
                        selectors.append((f"spec.ingress[{i}].from[{j}].podSelector", labels))
        for path, wanted in selectors:
            if not wanted:
                errors.append(f"{_where(file, doc)}: {path} is empty (selects every pod)")
            elif not any(_matches(wanted, pod) for pod in pods):
                errors.append(
                    f"{_where(file, doc)}: {path} {wanted} selects no pods of a Deployment or RayCluster here"
                )
    return errors


def validate_documents(docs: list[Doc], version: str) -> list[str]:
    """Every problem of a set of objects (file name, object), one line each."""
    errors: list[str] = []
    for file, doc in docs:
        if not isinstance(doc, dict):
            errors.append(f"{file}: a document is not a mapping")
            continue
        errors += [f"{_where(file, doc)}: {e}" for e in schema_errors(doc, version) + object_errors(doc)]
    return errors + cross_errors([(f, d) for f, d in docs if isinstance(d, dict)])


def load_folder(folder: Path) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """The objects of every file kustomization.yaml lists, and the problems met reading them."""
    import yaml

    errors: list[str] = []
    kustomize = folder / "kustomization.yaml"
    if not kustomize.is_file():
        return {}, [
            f"{folder}: no kustomization.yaml (write the folder with nndeploy deploy BUILD -o {folder})"
        ]
    try:
        kustomization = yaml.safe_load(kustomize.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        return {}, [f"kustomization.yaml: not YAML ({' '.join(str(exc).split())})"]
    if kustomization.get("kind") != "Kustomization" or not str(
        kustomization.get("apiVersion", "")
    ).startswith("kustomize.config.k8s.io/"):
        errors.append("kustomization.yaml: not a kustomize.config.k8s.io Kustomization")
    listed = [str(r) for r in kustomization.get("resources") or []]
    files: dict[str, list[dict[str, Any]]] = {}
    for name in listed:
        path = folder / name
        if not path.is_file():
            errors.append(f"kustomization.yaml: resource '{name}' does not exist")
            continue
        try:
            files[name] = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
        except yaml.YAMLError as exc:
            errors.append(f"{name}: not YAML ({' '.join(str(exc).split())})")
    for path in sorted(folder.glob("*.y*ml")):
        if path.name != "kustomization.yaml" and path.name not in listed:
            errors.append(f"kustomization.yaml: {path.name} is not listed in resources")
    return files, errors


def check_folder(folder: Path, version: str) -> tuple[dict[str, list[str]], list[str]]:
    """Validate a manifests folder: problems per listed file, and folder-level problems."""
    files, folder_errors = load_folder(folder)
    docs = [(name, doc) for name, documents in files.items() for doc in documents]
    per_file: dict[str, list[str]] = {name: [] for name in files}
    for line in validate_documents(docs, version):
        per_file[line.split(":", 1)[0]].append(line)
    return per_file, folder_errors
