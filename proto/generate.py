"""Regenerates the Python modules of the .proto files in this folder (the package nndeploy.proto).

After editing a .proto file here, run from the repository root:

    python proto/generate.py              # rewrites proto/*_pb2.py and proto/*_pb2_grpc.py
    python proto/generate.py --out DIR    # writes them to DIR instead (the tests compare with the committed)

and commit the .proto and the generated files together. It needs grpcio-tools at the version pinned in
pyproject's test extra (`pip install -e .[test]`): another protoc writes different files, and the tests that
check the committed files are current would fail.

The sources are compiled as `nndeploy/proto/<name>.proto`, so protoc itself writes package imports
(`from nndeploy.proto import stage_pb2`) into the *_grpc.py modules and the descriptor pool knows the files
under names no other package uses; any bare `import X_pb2` left is rewritten the same way.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = "nndeploy.proto"
SOURCES = ("inference.proto", "stage.proto", "health.proto")
HINT = "# Regenerate with: python proto/generate.py (see its docstring).\n"

_BARE_IMPORT = re.compile(r"^import (\w+_pb2)( as \w+)?$", re.MULTILINE)


def _fix(text: str) -> str:
    """Rewrites bare `import X_pb2` lines to package imports and adds the regeneration hint."""
    text = _BARE_IMPORT.sub(lambda m: f"from {PACKAGE} import {m.group(1)}{m.group(2) or ''}", text)
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if "DO NOT EDIT!" in line:
            lines.insert(i + 1, HINT)
            break
    return "".join(lines)


def generate(out_dir: Path) -> list[Path]:
    """Compiles SOURCES with grpc_tools.protoc, writes the Python modules to out_dir; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "src")
        gen = Path(tmp, "gen")
        pkg_dir = src.joinpath(*PACKAGE.split("."))
        pkg_dir.mkdir(parents=True)
        gen.mkdir()
        for name in SOURCES:
            shutil.copyfile(HERE / name, pkg_dir / name)
        rel = [f"{PACKAGE.replace('.', '/')}/{name}" for name in SOURCES]
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={src}",
            f"--python_out={gen}",
            f"--grpc_python_out={gen}",
            *rel,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"protoc failed ({done.returncode}):\n{done.stderr}")
        written = []
        for path in sorted(gen.joinpath(*PACKAGE.split(".")).glob("*.py")):
            target = out_dir / path.name
            target.write_text(_fix(path.read_text()))
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the modules (default: proto/)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
