"""nndeploy: one ONNX model and a heterogeneous cluster in, a verified distributed pipeline out.

The verbs are functions here with the command line's behaviour (`nndeploy.plan`, `split`, `compile`,
`verify`, `tune`, `serve`, `deploy`; see nndeploy.cli.api), imported on first use so `import nndeploy`
stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "compile", "deploy", "plan", "serve", "split", "tune", "verify"]
_VERBS = ("plan", "split", "compile", "verify", "tune", "serve", "deploy")


def __getattr__(name: str) -> Any:
    if name in _VERBS:
        from nndeploy.cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'nndeploy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_VERBS})
