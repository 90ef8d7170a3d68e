"""Writing a deploy folder: one YAML file per group of objects, kustomization.yaml and README.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from nndeploy.deploy.manifests import render
from nndeploy.deploy.options import DeployOptions
from nndeploy.deploy.readme import readme


def kustomization(options: DeployOptions, files: list[str]) -> dict[str, Any]:
    """kustomization.yaml listing every file, for `kubectl apply -k`."""
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": options.namespace,
        "resources": files,
    }


def dump_documents(documents: list[dict[str, Any]]) -> str:
    """YAML text of several documents separated by `---`."""

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:  # plain YAML, no &anchors for shared label dicts
            return True

    return "---\n".join(yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=1000) for doc in documents)


def write_folder(files: dict[str, list[dict[str, Any]]], options: DeployOptions, output: Path) -> list[Path]:
    """Write one YAML file per group, kustomization.yaml and README.md into `output`; returns the YAMLs."""
    output.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, documents in files.items():
        path = output / name
        path.write_text(dump_documents(documents), encoding="utf-8")
        paths.append(path)
    kustomize = output / "kustomization.yaml"
    kustomize.write_text(dump_documents([kustomization(options, list(files))]), encoding="utf-8")
    (output / "README.md").write_text(readme(options, files), encoding="utf-8")
    return [*paths, kustomize]


def deploy_build(
    build_dir: Path, output: Path, options: DeployOptions, ray: bool = False
) -> tuple[dict[str, list[dict[str, Any]]], list[Path]]:
    """The `deploy` verb: render every Kubernetes object for the build folder (plain manifests, and with
    `ray` KubeRay's too) and write them into `output` for `kubectl apply -k`; returns the objects by file
    name and the files written."""
    files = render(build_dir, options, ray=ray)
    return files, write_folder(files, options, output)
