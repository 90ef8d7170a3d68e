"""Project rules checked mechanically: the import rules of DESIGN.md, ruff, and a fast `import nndeploy`."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("partitioner", "targets", "runtime", "deploy", "proto")
# Inside targets/ the rooms form layers (DESIGN.md): a module imports its own room or a lower layer only.
TARGET_LAYERS = {"devices": 0, "artifacts": 0, "frontend": 1, "tuning": 2, "measure": 2, "build": 3}
VERB_LAYER = 4  # compile, tune, verify, inspect: the modules at targets/ root
# The one sanctioned crossing between parts (DESIGN.md): the runtime loads artifacts through the targets'
# loader API (and speaks the protocol of nndeploy.proto).
CROSSINGS = {
    "runtime": ("nndeploy.targets.artifacts.loader", "nndeploy.targets.artifacts.manifest", "nndeploy.proto")
}
# With nndeploy.cli*: the command line wires the parts together. The emulated worker is a script run by
# the emulated aarch64 python, never imported by the package: it wires runtime's worker to TVM's VM there.
WIRING = ("nndeploy", "nndeploy.__main__", "nndeploy.targets.artifacts.emulated_worker")


def imports_of(path: Path) -> set[str]:
    """Every module a source file imports (at any depth, including inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _within(module: str, packages: tuple[str, ...] | list[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def package_modules() -> dict[str, Path]:
    """Every module of the installed nndeploy package (each part through its own package path), by name."""
    import importlib
    import pkgutil

    found = {}
    for package in ["nndeploy", *(f"nndeploy.{part}" for part in PARTS)]:
        module = importlib.import_module(package)
        found[package] = Path(module.__file__)
        for info in pkgutil.walk_packages(module.__path__, f"{package}."):
            spec = info.module_finder.find_spec(info.name.rsplit(".", 1)[1], None)  # type: ignore[call-arg]
            if spec is not None and spec.origin and spec.origin.endswith(".py"):
                found[info.name] = Path(spec.origin)
    return found


def project_imports() -> dict[str, set[str]]:
    """module -> the package modules it imports (a `from package import name` counts as the module
    `package.name` when that is a module, else as `package`)."""
    modules = package_modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in imports_of(path):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PARTS else None


def _target_layer(module: str) -> tuple[str, int]:
    room = module.split(".")[2] if module.count(".") >= 2 else ""
    if (room in TARGET_LAYERS and module.count(".") >= 3) or (
        module.endswith(f".{room}") and room in TARGET_LAYERS
    ):
        return room, TARGET_LAYERS[room]
    return "verbs", VERB_LAYER


def import_problems(graph: dict[str, set[str]]) -> list[str]:
    """Every import that breaks DESIGN.md's rules, one line each."""
    problems = []
    for module, imported in sorted(graph.items()):
        if module in WIRING or module.startswith("nndeploy.cli"):
            continue
        part = _part(module)
        for other in sorted(imported):
            other_part = _part(other)
            if part is None and other_part is not None:
                problems.append(f"{module} (the spine) imports the part {other}")
            elif part is None and other.startswith("nndeploy.cli"):
                problems.append(f"{module} (the spine) imports the command line {other}")
            elif part is not None and other_part not in (None, part):
                if not _within(other, CROSSINGS.get(part, ())):
                    problems.append(f"{module} ({part}) imports {other} ({other_part})")
            elif part == "targets" and other_part == "targets" and other != "nndeploy.targets":
                (room, layer), (other_room, other_layer) = _target_layer(module), _target_layer(other)
                if room != other_room and other_layer >= layer:
                    problems.append(f"{module} ({room}) imports {other} ({other_room}): not a lower layer")
    return problems


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles among the package's modules (each as one path around it)."""
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for other in sorted(graph.get(node, ())):
            if other == "nndeploy" or other.endswith("__init__"):
                continue
            if state.get(other) == 1:
                cycles.append([*path[path.index(other) :], other] if other in path else [node, other])
            elif other not in state:
                visit(other, [*path, other])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_every_module_keeps_the_import_rules() -> None:
    graph = project_imports()
    assert len(graph) > 80 and "nndeploy.targets.build.stage" in graph  # the walk saw the whole package
    assert import_problems(graph) == []


def test_no_module_import_cycles() -> None:
    assert import_cycles(project_imports()) == []


def test_the_rule_checks_fail_on_forbidden_imports() -> None:
    """The checks above can fail: a spine module importing a part, a lower room importing a higher one,
    a part importing another, and a cycle are each reported."""
    graph = project_imports()
    bad = {k: set(v) for k, v in graph.items()}
    bad["nndeploy.graph"].add("nndeploy.partitioner.planner")
    bad["nndeploy.targets.frontend.importer"].add("nndeploy.targets.build.codegen")
    bad["nndeploy.deploy.manifests"].add("nndeploy.runtime.serve")
    problems = import_problems(bad)
    assert any(
        "nndeploy.graph (the spine) imports the part nndeploy.partitioner.planner" in p for p in problems
    )
    assert any(
        "frontend.importer (frontend) imports nndeploy.targets.build.codegen (build)" in p for p in problems
    )
    assert any("deploy.manifests (deploy) imports nndeploy.runtime.serve (runtime)" in p for p in problems)
    bad["nndeploy.targets.build.codegen"].add("nndeploy.targets.build.compiled")
    assert import_cycles(bad)


@pytest.mark.parametrize(
    ("library", "allowed"),
    [
        ("tvm", ("nndeploy.targets",)),
        ("onnxruntime", ("nndeploy.oracle",)),
        ("ray", ("nndeploy.runtime.ray_cluster",)),
    ],
)
def test_heavy_libraries_stay_where_design_puts_them(library: str, allowed: tuple[str, ...]) -> None:
    for module, path in package_modules().items():
        if _within(module, allowed) and not _within(module, ("nndeploy.targets.devices",)):
            continue
        bad = [m for m in imports_of(path) if m == library or m.startswith(library + ".")]
        assert not bad, f"{module} imports {library}"


def test_importing_nndeploy_is_fast_and_light() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); import nndeploy.cli, nndeploy.partitioner.planner, "
        "nndeploy.targets.devices.cluster; print(time.perf_counter() - t); "
        "print(sorted(m for m in ('tvm', 'onnxruntime', 'ray') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, heavy = done.stdout.splitlines()
    assert heavy == "[]"
    assert float(seconds) < 5.0


def test_every_subpackage_imports_under_the_nndeploy_name() -> None:
    import importlib

    for name in (
        "nndeploy.partitioner",
        "nndeploy.targets",
        "nndeploy.runtime",
        "nndeploy.deploy",
        "nndeploy.proto",
    ):
        module = importlib.import_module(name)
        assert Path(module.__file__).resolve().parent == ROOT / name.split(".")[1]


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    done = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]


def test_nothing_unpickles_or_evaluates_what_it_reads() -> None:
    """No pickle, marshal, eval or exec anywhere; numpy loads refuse pickles; YAML loads are safe."""
    problems = []
    for folder in ("nndeploy", *PARTS):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
                if isinstance(node, ast.Import | ast.ImportFrom):
                    names = [a.name for a in node.names] + (
                        [node.module] if isinstance(node, ast.ImportFrom) else []
                    )
                    if any(n and n.split(".")[0] in ("pickle", "marshal", "dill", "shelve") for n in names):
                        problems.append(f"{where}: imports a deserialiser of code")
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in ("eval", "exec") and isinstance(func, ast.Name):
                    problems.append(f"{where}: {name}()")
                keywords = {k.arg: k.value for k in node.keywords}
                if (
                    name == "load"
                    and isinstance(func, ast.Attribute)
                    and getattr(func.value, "id", "") == "np"
                ):
                    flag = keywords.get("allow_pickle")
                    if not (isinstance(flag, ast.Constant) and flag.value is False):
                        problems.append(f"{where}: np.load without allow_pickle=False")
                if name in ("load", "load_all") and getattr(func.value, "id", "") == "yaml":
                    problems.append(f"{where}: yaml.{name} (use yaml.safe_load)")
    assert not problems, problems
