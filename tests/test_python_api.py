"""The Python API: `import nndeploy` exposes the verbs lazily, and the README's example runs as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_is_light_and_lists_the_verbs() -> None:
    code = (
        "import sys, nndeploy; "
        "assert {'plan', 'split', 'compile', 'verify', 'tune', 'serve', 'deploy'} <= set(dir(nndeploy)); "
        "assert 'tvm' not in sys.modules and 'ray' not in sys.modules and 'onnxruntime' not in sys.modules; "
        "assert callable(nndeploy.plan) and nndeploy.plan.__doc__; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_errors_are_nndeploy_errors(tmp_path: Path) -> None:
    import nndeploy
    from nndeploy.errors import ClusterError, NNDeployError

    (tmp_path / "c.yaml").write_text("devices: [{name: a, profile: nope}]\n")
    with pytest.raises(ClusterError, match="unknown profile 'nope'") as info:
        nndeploy.plan(ROOT / "tests" / "golden" / "missing.onnx", tmp_path / "c.yaml", tmp_path / "p.json")
    assert isinstance(info.value, NNDeployError)
    with pytest.raises(AttributeError):
        nndeploy.not_a_verb  # noqa: B018


@pytest.mark.slow
def test_the_readme_python_example_runs(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    example = readme.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "examples").mkdir()
    for item in ("build_models.py", "clusters"):
        (tmp_path / "examples" / item).symlink_to(ROOT / "examples" / item)
    (tmp_path / "example.py").write_text(example)
    done = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stage(s)" in done.stdout and "all built: True" in done.stdout
    assert (tmp_path / "build" / "manifest.json").is_file()
