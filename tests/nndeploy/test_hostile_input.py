"""Hostile input, fuzzed with fixed seeds: broken ONNX files, cluster.yaml documents, plan.json and
manifest.json files, and KServe v2 requests. Each gets one clear NNDeployError (the CLI's `error:` line
and exit 2) or, over gRPC, the right status with a message; nothing crashes, hangs or reads outside its
folder. The counters at the bottom of each test are the number of inputs tried."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from test_cli import assert_user_error, nndeploy

from nndeploy.errors import NNDeployError
from nndeploy.graph import load_graph
from nndeploy.planfile import read_plan, validate_plan_dict
from nndeploy.proto import inference_pb2, inference_pb2_grpc
from nndeploy.runtime.chain import free_ports
from nndeploy.runtime.endpoint import start_endpoint
from nndeploy.runtime.links import CHANNEL_OPTIONS
from nndeploy.runtime.served import ModelSpec
from nndeploy.runtime.worker import StageSpec, serve_stage
from nndeploy.targets.artifacts.manifest import read_manifest
from nndeploy.targets.devices.cluster import parse_cluster
from nndeploy.types import TensorSpec

from models import chain_model


def fuzz(examples: int) -> settings:
    """Fixed-seed hypothesis settings: the same inputs on every run, CI included."""
    return settings(
        derandomize=True,
        deadline=None,
        max_examples=examples,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )


OUTCOMES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def outcome_counts() -> Iterator[None]:
    """Print how many inputs of each family were tried and how they ended (visible with -s)."""
    yield
    print("\nhostile inputs tried:", json.dumps(dict(sorted(OUTCOMES.items()))))


# --- ONNX files ---------------------------------------------------------------------------------------
def _broken_models(tmp: Path) -> dict[str, Path]:
    """One file per way an ONNX model can be broken, each a real file on disk."""
    good = chain_model().SerializeToString()
    files = {
        "truncated": good[: len(good) // 2],
        "random bytes": np.random.default_rng(0).bytes(4096),
        "empty": b"",
        "text": b"name: not a model\n",
    }
    found = {name: tmp / f"{name.replace(' ', '_')}.onnx" for name in files}
    for name, data in files.items():
        found[name].write_bytes(data)

    def save(name: str, model: onnx.ModelProto) -> None:
        found[name] = tmp / f"{re.sub(r'[^A-Za-z0-9]', '_', name)}.onnx"
        found[name].write_bytes(model.SerializeToString())

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    cycle = helper.make_graph(
        [
            helper.make_node("Relu", ["b"], ["a"], name="r1"),
            helper.make_node("Relu", ["a"], ["b"], name="r2"),
        ],
        "cycle",
        [x],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4])],
    )
    save("graph cycle", helper.make_model(cycle, opset_imports=[helper.make_opsetid("", 17)]))
    missing = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "missing", [x], [y]
    )
    save("missing initializer", helper.make_model(missing, opset_imports=[helper.make_opsetid("", 17)]))
    for label, dim in (("huge dims", 1 << 40), ("negative dims", -3)):
        big = helper.make_tensor_value_info("x", TensorProto.FLOAT, [dim, 4])
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], label, [big], [y])
        save(label, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("float_data")
    weight.ClearField("raw_data")
    for location in ("../../../../etc/hostname", "/etc/hostname"):
        entry = weight.external_data.add()
        entry.key, entry.value = "location", location
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "ext", [x], [y], [weight]
        )
        save(
            f"external data at {location}",
            helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
        )
        weight.ClearField("external_data")
    unknown = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"], name="n")], "unknown", [x], [y])
    save("unknown op", helper.make_model(unknown, opset_imports=[helper.make_opsetid("", 17)]))
    sequence = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, [1, 4])
    to_sequence = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x"], ["s"], name="seq")], "seq_out", [x], [sequence]
    )
    save("sequence output", helper.make_model(to_sequence, opset_imports=[helper.make_opsetid("", 17)]))
    return found


def test_broken_onnx_files_are_one_clear_error(tmp_path: Path) -> None:
    from nndeploy.partitioner.planner import plan

    cluster = parse_cluster({"devices": [{"name": "server", "profile": "x86-avx2-server"}]}, "c", tmp_path)
    for name, path in _broken_models(tmp_path).items():
        with pytest.raises(NNDeployError) as caught:
            plan(load_graph(path, {}), cluster, "latency")  # huge dims load, and fit nowhere
        message = str(caught.value)
        assert "\n" not in message, (name, message)
        assert str(path) in message or name == "huge dims", (name, message)
        if name.startswith("external data"):
            assert "outside" in message, message
        OUTCOMES["onnx"] += 1
    assert OUTCOMES["onnx"] >= 12


def test_the_cli_reports_a_broken_model_in_one_line(tmp_path: Path) -> None:
    cluster = tmp_path / "c.yaml"
    cluster.write_text("devices:\n  - {name: server, profile: x86-avx2-server}\n")
    models = _broken_models(tmp_path)
    for name in ("truncated", "graph cycle", "external data at ../../../../etc/hostname"):
        assert_user_error(nndeploy("plan", models[name], "--cluster", cluster), str(models[name]))
    assert_user_error(
        nndeploy("plan", models["sequence output"], "--cluster", cluster),
        "output 's' is a sequence, not a tensor",
        "export the model with tensor inputs and outputs",
    )


@fuzz(100)
@given(data=st.binary(min_size=0, max_size=2048), cut=st.integers(min_value=1, max_value=2000))
def test_fuzzed_model_bytes_never_crash_the_loader(tmp_path: Path, data: bytes, cut: int) -> None:
    good = chain_model().SerializeToString()
    path = tmp_path / "fuzz.onnx"
    path.write_bytes(good[: cut % len(good)] + data)
    try:
        load_graph(path, {})
    except NNDeployError as exc:
        assert "\n" not in str(exc)
    OUTCOMES["onnx bytes"] += 1


# --- cluster.yaml -------------------------------------------------------------------------------------
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.floats(allow_nan=True), st.text(max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
device = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["a", "b", "server"]), values)},
    optional={
        "profile": st.one_of(st.sampled_from(["x86-avx2-server", "raspberry-pi-5", "jetsn-orin"]), values),
        "labels": values,
        "host": values,
        "typo_field": values,
    },
)
cluster_docs = st.one_of(
    values,
    st.fixed_dictionaries(
        {"devices": st.one_of(st.lists(device, max_size=4), values)},
        optional={
            "name": values,
            "links": st.one_of(
                st.lists(
                    st.fixed_dictionaries(
                        {
                            "between": st.one_of(
                                st.lists(st.sampled_from(["a", "b", "server", "x"]), max_size=3), values
                            )
                        },
                        optional={"gbps": values, "latency_ms": values},
                    ),
                    max_size=4,
                ),
                values,
            ),
            "default_link": values,
            "input_at": values,
            "output_to": values,
            "profiles": values,
            "extra": values,
        },
    ),
)


@fuzz(300)
@given(doc=cluster_docs)
def test_fuzzed_cluster_documents_are_accepted_or_one_clear_error(tmp_path: Path, doc: Any) -> None:
    try:
        parse_cluster(doc, "cluster.yaml", tmp_path)
        OUTCOMES["cluster accepted"] += 1
    except NNDeployError as exc:
        assert str(exc).startswith("cluster.yaml")
        OUTCOMES["cluster refused"] += 1


# --- plan.json and manifest.json ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real compiled build of the chain model on one x86 server."""
    folder = tmp_path_factory.mktemp("built")
    onnx.save(chain_model(), folder / "chain.onnx")
    (folder / "one.yaml").write_text("devices:\n  - {name: server, profile: x86-avx2-server}\n")
    done = nndeploy(
        "plan", folder / "chain.onnx", "--cluster", folder / "one.yaml", "-o", folder / "plan.json"
    )
    assert done.returncode == 0, done.stderr
    done = nndeploy("compile", folder / "plan.json", "-o", folder / "build")
    assert done.returncode == 0, done.stderr
    return folder / "build"


def _mutations(document: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every (path, value) of a JSON document."""
    yield path, document
    if isinstance(document, dict):
        for key, value in document.items():
            yield from _mutations(value, (*path, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from _mutations(value, (*path, index))


def _replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = json.loads(json.dumps(document))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copy


@fuzz(300)
@given(pick=st.integers(min_value=0), value=values)
def test_tampered_plans_are_refused_in_one_line(built: Path, tmp_path: Path, pick: int, value: Any) -> None:
    plan = json.loads((built / "plan.json").read_text())
    spots = list(_mutations(plan))
    where, _ = spots[pick % len(spots)]
    tampered = tmp_path / "plan.json"
    tampered.write_text(json.dumps(_replaced(plan, where, value), allow_nan=True))
    try:
        read_plan(tampered)
        OUTCOMES["plan accepted"] += 1
    except NNDeployError as exc:
        assert "\n" not in str(exc).strip()
        OUTCOMES["plan refused"] += 1


@pytest.mark.parametrize(
    "path", ["../../../../etc/hostname", "/etc/hostname", "sub/../../x.so", "", "stage_0.so\x00.txt"]
)
def test_manifest_paths_outside_the_build_are_refused(built: Path, tmp_path: Path, path: str) -> None:
    import shutil

    copy = tmp_path / "build"
    shutil.copytree(built, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["stages"][0]["artifact"]["path"] = path
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(NNDeployError, match=r"not a file inside|not a valid nndeploy manifest"):
        read_manifest(copy)
    done = nndeploy("verify", copy)
    assert_user_error(done, "manifest.json")
    assert "refusing a tampered manifest" in done.stderr or "not a valid nndeploy manifest" in done.stderr


@fuzz(200)
@given(pick=st.integers(min_value=0), value=values)
def test_tampered_manifests_are_refused_in_one_line(
    built: Path, tmp_path: Path, pick: int, value: Any
) -> None:
    import shutil

    copy = tmp_path / f"build-{pick}"
    shutil.copytree(built, copy, dirs_exist_ok=True)
    manifest = json.loads((copy / "manifest.json").read_text())
    spots = list(_mutations(manifest))
    where, _ = spots[pick % len(spots)]
    (copy / "manifest.json").write_text(json.dumps(_replaced(manifest, where, value), allow_nan=True))
    try:
        read_manifest(copy)
        OUTCOMES["manifest accepted"] += 1
    except NNDeployError as exc:
        assert "\n" not in str(exc).strip()
        OUTCOMES["manifest refused"] += 1


def test_plan_schema_rejects_wrong_types() -> None:
    with pytest.raises(NNDeployError):
        validate_plan_dict({"schema_version": "x"}, "plan.json")


# --- KServe v2 requests -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """A one-stage chain (y = x + 1, x float32[2,3]) behind a real endpoint, on a thread of its own."""
    stage_port, client_port = free_ports(2)
    model = ModelSpec(
        "m",
        "1",
        (TensorSpec("x", (2, 3), "float32"),),
        (TensorSpec("y", (2, 3), "float32"),),
        (("cpu", f"127.0.0.1:{stage_port}"),),
    )
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: asyncio.Event | None = None

    async def run() -> None:
        nonlocal stop
        stop = asyncio.Event()
        worker = asyncio.create_task(
            serve_stage(
                StageSpec(0, "cpu", ("x",), ("y",), None), lambda t: {"y": t["x"] + 1}, stage_port, stop=stop
            )
        )
        server, live, _ = await start_endpoint(model, client_port, max_request_bytes=1 << 20)
        for _ in range(100):
            if all(live.stage_up) and all(live.stats):
                break
            await asyncio.sleep(0.1)
        started.set()
        await stop.wait()
        await server.stop(grace=1.0)
        await worker

    thread = threading.Thread(target=lambda: loop.run_until_complete(run()), daemon=True)
    thread.start()
    assert started.wait(30)
    yield f"127.0.0.1:{client_port}"
    loop.call_soon_threadsafe(stop.set)  # type: ignore[union-attr]
    thread.join(30)
    assert not thread.is_alive()


DATATYPES = ["FP32", "FP64", "INT64", "INT32", "UINT8", "BOOL", "BYTES", "FP16", "BF16", "fp32", "", "XYZ"]
tensors = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["x", "y", "", "x "]),
        "datatype": st.sampled_from(DATATYPES),
        "shape": st.lists(st.integers(-2, 1 << 40), max_size=4) | st.just([2, 3]),
    },
    optional={"raw": st.binary(max_size=64), "fp32": st.lists(st.floats(width=32), max_size=8)},
)


@fuzz(250)
@given(inputs=st.lists(tensors, max_size=3), model=st.sampled_from(["m", "m", "other", ""]))
def test_fuzzed_requests_get_a_status_and_the_server_keeps_serving(
    endpoint: str, inputs: list[dict[str, Any]], model: str
) -> None:
    request = inference_pb2.ModelInferRequest(model_name=model)
    for tensor in inputs:
        entry = request.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        if "fp32" in tensor:
            entry.contents.fp32_contents.extend(tensor["fp32"])
        if "raw" in tensor:
            request.raw_input_contents.append(tensor["raw"])
    with grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            stub.ModelInfer(request, timeout=10)
            OUTCOMES["request OK"] += 1
        except grpc.RpcError as exc:
            assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), exc
            assert exc.details()
            OUTCOMES[f"request {exc.code().name}"] += 1
        good = inference_pb2.ModelInferRequest(model_name="m")
        good.inputs.add(name="x", datatype="FP32", shape=[2, 3])
        good.raw_input_contents.append(np.ones((2, 3), np.float32).tobytes())
        reply = stub.ModelInfer(good, timeout=10)
        assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == [2.0] * 6


def test_raw_content_that_does_not_match_the_shape_is_refused(endpoint: str) -> None:
    request = inference_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    request.raw_input_contents.append(b"\0" * 1000)
    with (
        grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1000 bytes, expected 24" in (caught.value.details() or "")


def test_a_request_beyond_the_size_limit_is_refused(endpoint: str) -> None:
    """The fixture's endpoint takes messages of at most 1 MiB (--max-request-mb 1)."""
    request = inference_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    request.raw_input_contents.append(b"\0" * (2 << 20))
    with grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        live = stub.ServerLive(inference_pb2.ServerLiveRequest(), timeout=10)
    assert live.live
