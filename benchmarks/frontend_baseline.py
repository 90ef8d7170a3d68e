"""TVM's Relax ONNX frontend as it is, with no nndeploy preparation: the baseline the conformance runner
compares nndeploy's own path with; and the same run through nndeploy's import (function expansion and
the project's converters), which the runner uses to find which node of a model TVM computes wrongly."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx


def run_frontend_as_is(model: onnx.ModelProto, feeds: dict[str, Any]) -> list[Any]:
    """Import `model` with from_onnx (the feeds' shapes and dtypes), compile it for llvm and run it on the
    Relax VM; returns every output as a numpy array."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    initializers = {t.name for t in model.graph.initializer}
    inputs = [vi.name for vi in model.graph.input if vi.name not in initializers]
    shapes = {name: list(np.shape(x)) for name, x in feeds.items()}
    dtypes = {name: np.asarray(x).dtype.name for name, x in feeds.items()}
    mod = from_onnx(model, shape_dict=shapes, dtype_dict=dtypes, keep_params_in_input=False)
    executable = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return _flatten(vm["main"](*[tvm.runtime.tensor(np.asarray(feeds[name])) for name in inputs]))


def run_project_import(model: onnx.ModelProto, feeds: dict[str, Any]) -> list[Any]:
    """As `run_frontend_as_is`, through nndeploy's import: ops without a converter expanded into their
    standard definition, and the project's own converters."""
    import tvm
    from tvm import relax

    from nndeploy.targets.frontend.converters import from_onnx
    from nndeploy.targets.frontend.expansion import expand_functions
    from nndeploy.targets.frontend.ops import tvm_onnx_ops
    from nndeploy.targets.frontend.opset_upgrade import upgrade_opset

    initializers = {t.name for t in model.graph.initializer}
    inputs = [vi.name for vi in model.graph.input if vi.name not in initializers]
    shapes = {name: list(np.shape(x)) for name, x in feeds.items()}
    dtypes = {name: np.asarray(x).dtype.name for name, x in feeds.items()}
    mod = from_onnx(expand_functions(upgrade_opset(model), tvm_onnx_ops()), shapes, dtypes)
    executable = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return _flatten(vm["main"](*[tvm.runtime.tensor(np.asarray(feeds[name])) for name in inputs]))


def _flatten(result: Any) -> list[Any]:
    if hasattr(result, "numpy"):
        return [result.numpy()]
    return [item for part in result for item in _flatten(part)]
