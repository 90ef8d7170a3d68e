"""Project rules checked mechanically: the import rules of DESIGN.md, ruff, and a fast `import nndeploy`."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"partitioner": "partitioner", "targets": "targets", "runtime": "runtime", "deploy": "deploy"}
CORE = (
    "types", "errors", "graph", "model_prep", "constant_folding", "op_costs", "paths", "cutting", "oracle",
    "shape_probe",
)  # fmt: skip


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


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


# The one sanctioned crossing (DESIGN.md): the runtime loads artifacts through the targets' loader API.
LOADER_API = ("nndeploy.targets.loader", "nndeploy.targets.manifest")


def test_packages_do_not_import_each_other() -> None:
    for package, folder in PACKAGES.items():
        others = [f"nndeploy.{other}" for other in PACKAGES if other != package]
        allowed = LOADER_API if package == "runtime" else ()
        for path in sources(folder):
            imported = [m for m in imports_of(path) if not _within(m, allowed)]
            bad = [m for m in imported if _within(m, others)]
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_core_modules_import_no_other_part_of_the_project() -> None:
    allowed = {f"nndeploy.{name}" for name in CORE} | {"nndeploy"}
    for name in CORE:
        path = ROOT / "nndeploy" / f"{name}.py"
        bad = [
            m
            for m in imports_of(path)
            if m.startswith("nndeploy.") and ".".join(m.split(".")[:2]) not in allowed
        ]
        assert not bad, f"nndeploy/{name}.py imports {bad}"


@pytest.mark.parametrize(
    ("library", "allowed"),
    [
        ("tvm", ("targets", "runtime")),
        # targets/profiling.py times this host's ops with onnxruntime for `nndeploy profile`, and
        # targets/plan_check.py times candidate plans' stages for `nndeploy plan --check-top`.
        ("onnxruntime", ("nndeploy/oracle.py", "runtime", "targets/profiling.py", "targets/plan_check.py")),
        ("ray", ("runtime/ray_cluster.py",)),
    ],
)
def test_heavy_libraries_stay_where_design_puts_them(library: str, allowed: tuple[str, ...]) -> None:
    for folder in ("nndeploy", *PACKAGES.values()):
        for path in sources(folder):
            relative = path.relative_to(ROOT).as_posix()
            if any(relative == a or relative.startswith(a + "/") for a in allowed):
                continue
            bad = [m for m in imports_of(path) if m == library or m.startswith(library + ".")]
            assert not bad, f"{relative} imports {library}"


def test_importing_nndeploy_is_fast_and_light() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); import nndeploy.cli, nndeploy.partitioner.planner, "
        "nndeploy.targets.cluster; print(time.perf_counter() - t); "
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
    for folder in ("nndeploy", *PACKAGES.values()):
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
