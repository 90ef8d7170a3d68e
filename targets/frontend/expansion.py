"""Expansion of ONNX ops TVM's frontend has no converter for into the ops their schema defines them by.

Many ONNX ops (Celu, Mish, Swish, HardSwish, the loss functions, ...) are defined in the standard by a
function body of simpler ops, fixed or built for the node's attributes and input types. When TVM cannot
import such an op, the node is replaced by that body (through a model-local function and onnx's own
inliner, which binds attributes and renames tensors), so TVM compiles it instead of onnxruntime running
it. Local functions a model brings itself are inlined the same way. No TVM here: ModelProto in, out.
"""

from __future__ import annotations

from collections.abc import Collection

import onnx
from onnx import defs, helper, inliner, version_converter

from nndeploy.cutting import value_infos

DOMAIN = "nndeploy.expanded"
ROUNDS = 3  # a body may use another op that needs expanding; three levels cover the standard's ops


def expand_functions(model: onnx.ModelProto, keep: Collection[str]) -> onnx.ModelProto:
    """A copy of `model` with local functions inlined and every default-domain node whose op is not in
    `keep` (the ops the compiler imports) replaced by its schema's function body, where it has one."""
    if model.functions:
        model = inliner.inline_local_functions(model)
    changed = False
    for _ in range(ROUNDS):
        expanded = _expand_once(model, frozenset(keep))
        if expanded is None:
            break
        model, changed = expanded, True
    return _tensor_constants(model) if changed else model


# Function bodies write constants as value_float, value_ints, ...; TVM's frontend reads `value` only.
_SCALAR_CONSTANTS = {
    "value_float": (onnx.TensorProto.FLOAT, False),
    "value_floats": (onnx.TensorProto.FLOAT, True),
    "value_int": (onnx.TensorProto.INT64, False),
    "value_ints": (onnx.TensorProto.INT64, True),
}


def _tensor_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every Constant given as value_float(s)/value_int(s) given as a `value` tensor."""
    for node in model.graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
            continue
        attribute = node.attribute[0]
        if attribute.name not in _SCALAR_CONSTANTS:
            continue
        elem_type, is_list = _SCALAR_CONSTANTS[attribute.name]
        value = helper.get_attribute_value(attribute)
        dims = [len(value)] if is_list else []
        tensor = helper.make_tensor("value", elem_type, dims, value if is_list else [value])
        del node.attribute[:]
        node.attribute.append(helper.make_attribute("value", tensor))
    return model


def expandable(node: onnx.NodeProto, model: onnx.ModelProto) -> bool:
    """Whether the standard defines `node`'s op (at the model's opset) by a function body."""
    return _body(node, _opset(model), _types(model)) is not None


def _expand_once(model: onnx.ModelProto, keep: frozenset[str]) -> onnx.ModelProto | None:
    """One round of expansion, or None when no node needs and has a body."""
    types = _types(model)
    version = _opset(model)
    nodes: list[onnx.NodeProto] = []
    changed = False
    for number, node in enumerate(model.graph.node):
        replacement = None
        if node.domain in ("", "ai.onnx") and node.op_type not in keep and version is not None:
            replacement = _expanded_nodes(node, number, version, types)
        nodes.extend(replacement if replacement is not None else [node])
        changed |= replacement is not None
    if not changed:
        return None
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    return copy


def _expanded_nodes(
    node: onnx.NodeProto, number: int, version: int, types: dict[str, onnx.TypeProto]
) -> list[onnx.NodeProto] | None:
    """The nodes of `node`'s function body, attributes bound, tensors renamed, in opset `version`."""
    body = _body(node, version, types)
    if body is None:
        return None
    written = next((o.version for o in body.opset_import if o.domain in ("", "ai.onnx")), version)
    body.name, body.domain = node.op_type, DOMAIN
    call = onnx.NodeProto()
    call.CopyFrom(node)
    call.domain, call.name = DOMAIN, f"{node.name or node.op_type}_{number}"
    inputs = [name for name in node.input if name]
    graph = helper.make_graph(
        [call],
        "expand",
        [helper.make_value_info(name, types[name]) for name in inputs],
        [helper.make_value_info(name, types.get(name, onnx.TypeProto())) for name in node.output if name],
    )
    wrapper = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", written), helper.make_opsetid(DOMAIN, 1)],
        functions=[body],
    )
    try:
        inlined = inliner.inline_local_functions(wrapper)
        if any(n.domain == DOMAIN for n in inlined.graph.node):
            return None
        kept = [o for o in inlined.opset_import if o.domain != DOMAIN]
        del inlined.opset_import[:]
        inlined.opset_import.extend(kept)
        if written != version:
            inlined = version_converter.convert_version(inlined, version)
    except Exception:  # onnx cannot inline or convert this body: keep the node
        return None
    outside = {*inputs, *node.output}
    prefix = f"{call.name}/"
    for position, inner in enumerate(inlined.graph.node):
        inner.name = f"{prefix}{position}_{inner.op_type}"
        inner.input[:] = [n if not n or n in outside else prefix + n for n in inner.input]
        inner.output[:] = [n if not n or n in outside else prefix + n for n in inner.output]
    return list(inlined.graph.node)


def _body(
    node: onnx.NodeProto, version: int | None, types: dict[str, onnx.TypeProto]
) -> onnx.FunctionProto | None:
    """The function body the standard defines `node` by at opset `version` (built for its attributes
    and input types), or None."""
    if version is None:
        return None
    try:
        schema = defs.get_schema(node.op_type, version, "")
        plain = [v for v in schema.function_opset_versions if v <= version]
        dependent = [v for v in schema.context_dependent_function_opset_versions if v <= version]
        if plain:
            built = schema.get_function_with_opset_version(max(plain))
        elif dependent:
            if any(name and name not in types for name in node.input):
                return None
            inputs = [types[name].SerializeToString() if name else b"" for name in node.input]
            built = schema.get_context_dependent_function_with_opset_version(
                max(dependent), node.SerializeToString(), inputs
            )
        else:
            return None
    except Exception:  # no schema, or a body the schema cannot build for these inputs: keep the node
        return None
    return onnx.FunctionProto.FromString(built) if built else None


def _opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    return {name: vi.type for name, vi in value_infos(model).items()}
