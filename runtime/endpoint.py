"""The KServe v2 (Open Inference Protocol) gRPC endpoint in front of a chain of stage workers.

It validates each request against the model (name, dtype, shape: INVALID_ARGUMENT with a precise
message), sends it to the first stage, and waits for the last stage to deliver the result to its
ResultSink service. A watcher checks every stage's health; when one goes down, every request in flight
fails at once with UNAVAILABLE (nothing hangs) and the server reports not-ready until the stage is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
import numpy as np

from nndeploy.proto import (
    health_pb2,
    health_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    stage_pb2,
    stage_pb2_grpc,
)
from nndeploy.runtime import bulk, shm
from nndeploy.runtime.access import ServerAccess
from nndeploy.runtime.batcher import Batcher
from nndeploy.runtime.links import CHANNEL_OPTIONS, Links, PeerUnavailable, bind_port, open_channel
from nndeploy.runtime.malloc import keep_large_buffers
from nndeploy.runtime.observed import Observed
from nndeploy.runtime.served import ModelSpec, Refused, Request, input_problem, timeout_parameter
from nndeploy.runtime.tensors import (
    dtype_to_kserve,
    numpy_to_infer_response_outputs,
    request_inputs_to_numpy,
)
from nndeploy.runtime.tls import TlsFiles, stage_identity
from nndeploy.runtime.triton_model import Statistics, model_config
from nndeploy.runtime.wire import Frame, frame, sink_handler
from nndeploy.types import TensorSpec

STATUS = {code.name: code for code in grpc.StatusCode}


def _ns(seconds: float) -> int:
    return max(int(seconds * 1e9), 0)


def _compute_ns(timings: Sequence[Any]) -> int:
    """The stages' compute time of one run, from the StageTimings it carries back."""
    return sum(_ns(t.compute_ms / 1e3) for t in timings)


def _shorter(a: float | None, b: float | None) -> float | None:
    """The smaller of two optional timeouts (None: no limit)."""
    return b if a is None else a if b is None else min(a, b)


class Endpoint(
    inference_pb2_grpc.GRPCInferenceServiceServicer,
    health_pb2_grpc.HealthServicer,
):
    """KServe v2 servicer + result sink (Deliver, with runtime.wire's codec) + health, sharing one
    pending-request table."""

    def __init__(self, model: ModelSpec, address: str, tls: TlsFiles | None = None) -> None:
        self.model = model
        self.address = address
        self.tls = tls
        self.side: bulk.Listener | None = None  # side connections for delivered results (runtime.bulk)
        self.pending: dict[str, asyncio.Future[Frame]] = {}
        self.links = Links(tls)
        self.stage_up = [True] * len(model.stages)
        self.stats: list[stage_pb2.StageStats | None] = [None] * len(model.stages)
        self.observed = Observed(model.name, [device for device, _ in model.stages])
        self.statistics = Statistics()
        self.batcher = (
            Batcher(
                self._chain,
                model.max_batch,
                model.batch_delay_ms / 1e3,
                model.batch_sizes,
                self._ran,
                max_running=len(model.stages),  # one batch per stage keeps the pipeline full
            )
            if model.max_batch > 0
            else None
        )
        self.watcher: asyncio.Task[None] | None = None
        self._channels: list[grpc.aio.Channel] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closing = ""

    # --- KServe v2 -------------------------------------------------------------------------------------
    async def ServerLive(self, request: Any, context: Any) -> inference_pb2.ServerLiveResponse:
        """Live while the process serves."""
        return inference_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> inference_pb2.ServerReadyResponse:
        """Ready when every stage worker is up."""
        return inference_pb2.ServerReadyResponse(ready=all(self.stage_up))

    async def ModelReady(self, request: Any, context: Any) -> inference_pb2.ModelReadyResponse:
        """Ready when the name matches and every stage worker is up."""
        await self._check_model(request.name, context, request.version)
        return inference_pb2.ModelReadyResponse(ready=all(self.stage_up))

    async def ServerMetadata(self, request: Any, context: Any) -> inference_pb2.ServerMetadataResponse:
        """Server name and version."""
        from nndeploy import __version__

        return inference_pb2.ServerMetadataResponse(name="nndeploy", version=__version__, extensions=[])

    async def ModelMetadata(self, request: Any, context: Any) -> inference_pb2.ModelMetadataResponse:
        """Inputs and outputs with KServe datatypes and shapes."""
        await self._check_model(request.name, context, request.version)
        return self.metadata()

    def metadata(self) -> inference_pb2.ModelMetadataResponse:
        """The served model's metadata (both protocols answer with it)."""
        meta = inference_pb2.ModelMetadataResponse.TensorMetadata
        batched = self.model.max_batch > 0

        def shape(spec: TensorSpec) -> list[int]:  # with batching, any batch up to max_batch: -1
            return [-1, *spec.shape[1:]] if batched else list(spec.shape)

        return inference_pb2.ModelMetadataResponse(
            name=self.model.name,
            versions=[self.model.version],
            platform="nndeploy_pipeline",
            inputs=[
                meta(name=t.name, datatype=dtype_to_kserve(t.dtype), shape=shape(t))
                for t in self.model.inputs
            ],
            outputs=[
                meta(name=t.name, datatype=dtype_to_kserve(t.dtype), shape=shape(t))
                for t in self.model.outputs
            ],
            properties=dict(self.model.properties),
        )

    async def ModelConfig(self, request: Any, context: Any) -> inference_pb2.ModelConfigResponse:
        """Triton's model configuration of the served model."""
        await self._check_model(request.name, context, request.version)
        return inference_pb2.ModelConfigResponse(config=self.config())

    def config(self) -> inference_pb2.ModelConfig:
        """Triton's model configuration: tensors, batching and each stage's device."""
        return model_config(
            self.model.name,
            self.model.inputs,
            self.model.outputs,
            self.model.stages,
            self.model.max_batch,
            self.model.batch_delay_ms,
            self.model.batch_sizes if self.model.max_batch > 0 else (),
        )

    async def ModelStatistics(self, request: Any, context: Any) -> inference_pb2.ModelStatisticsResponse:
        """Triton's statistics of the served model (an empty name: of every model, the one served)."""
        if request.name:
            await self._check_model(request.name, context, request.version)
        return self.model_statistics()

    def model_statistics(self) -> inference_pb2.ModelStatisticsResponse:
        """The served model's statistics since the endpoint started."""
        return inference_pb2.ModelStatisticsResponse(
            model_stats=[self.statistics.proto(self.model.name, self.model.version)]
        )

    async def RepositoryIndex(self, request: Any, context: Any) -> inference_pb2.RepositoryIndexResponse:
        """Triton's repository index: the one model this endpoint serves."""
        return self.repository_index(request.ready)

    def repository_index(self, ready_only: bool = False) -> inference_pb2.RepositoryIndexResponse:
        """The one model this endpoint serves, READY while every stage is up (else UNAVAILABLE, naming the
        stages that are down); none with `ready_only` while a stage is down."""
        down = self.down()
        ready = not down
        entry = inference_pb2.RepositoryIndexResponse.ModelIndex(
            name=self.model.name,
            version=self.model.version,
            state="READY" if ready else "UNAVAILABLE",
            reason="" if ready else f"{down} is down",
        )
        return inference_pb2.RepositoryIndexResponse(models=[] if ready_only and not ready else [entry])

    async def ModelInfer(self, request: Any, context: Any) -> inference_pb2.ModelInferResponse:
        """Run one request through the chain (see `infer`)."""
        deadline_s = context.time_remaining()

        def decode() -> Request:
            return Request(
                request_inputs_to_numpy(request),
                tuple(o.name for o in request.outputs),
                _shorter(deadline_s, timeout_parameter(request.parameters)),
            )

        try:
            outputs = await self.infer(request.model_name, request.model_version, decode)
        except Refused as refused:
            await context.abort(STATUS.get(refused.code, grpc.StatusCode.INTERNAL), refused.message)
        response = inference_pb2.ModelInferResponse(
            model_name=self.model.name, model_version=self.model.version, id=request.id
        )
        numpy_to_infer_response_outputs(outputs, response)
        return response

    async def infer(self, name: str, version: str, decode: Callable[[], Request]) -> dict[str, np.ndarray]:
        """Check the model, decode the request (`decode` raises ValueError for a malformed one), run it
        through the chain within its timeout (at most the model's) and return the outputs it wants. Every
        answer is counted by gRPC status code (`observed`) and in Triton's statistics; a refusal raises
        Refused, a client gone raises CancelledError."""
        started = time.perf_counter()
        timeout = self.model.timeout_s
        try:
            self.check_model(name, version)
            try:
                request = decode()
            except ValueError as exc:
                raise Refused("INVALID_ARGUMENT", str(exc)) from None
            decoded = time.perf_counter()
            if request.timeout_s is not None:
                timeout = min(timeout, request.timeout_s)
            outputs, ran, waited_s = await self._run(request.inputs, request.outputs, timeout)
        except Refused as refused:
            self.observed.answered(refused.code)
            self.statistics.failed(_ns(time.perf_counter() - started))
            raise
        except asyncio.CancelledError:  # the client went away, or its deadline passed
            expired = time.perf_counter() - started >= timeout
            self.observed.answered("DEADLINE_EXCEEDED" if expired else "CANCELLED")
            self.statistics.failed(_ns(time.perf_counter() - started))
            raise
        total_s = time.perf_counter() - started
        self.observed.answered("OK", total_s)
        timings, extracted_s = ran
        queue_ns = _ns(waited_s) + sum(_ns(t.queue_ms / 1e3) for t in timings)
        samples = int(next(iter(request.inputs.values())).shape[0]) if self.batcher is not None else 1
        self.statistics.succeeded(
            _ns(total_s), queue_ns, _ns(decoded - started), _compute_ns(timings), _ns(extracted_s), samples
        )
        if self.batcher is None:  # the batcher tells `_ran` of each batch it runs
            self._ran(1, ran, decoded - started)
        return outputs

    def _ran(self, samples: int, ran: tuple[Sequence[Any], float], input_s: float) -> None:
        """One run of the chain (a batch, or a request alone) holding `samples` samples, `input_s` spent
        preparing its inputs: Triton's execution statistics and the batch-size histogram."""
        timings, extracted_s = ran
        self.statistics.executed(samples, _ns(input_s), _compute_ns(timings), _ns(extracted_s))
        self.observed.batch(samples)

    async def _run(
        self, arrays: dict[str, np.ndarray], wanted: Sequence[str], timeout: float
    ) -> tuple[dict[str, np.ndarray], tuple[Sequence[Any], float], float]:
        """The `wanted` outputs for one request, the chain's report (stage timings, seconds spent reading
        the result) and the seconds it waited for a batch; Refused for anything the client or the chain
        got wrong."""
        problem = input_problem(self.model, arrays)
        if problem:
            raise Refused("INVALID_ARGUMENT", problem)
        wanted = list(wanted) or [t.name for t in self.model.outputs]
        names = [t.name for t in self.model.outputs]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise Refused("INVALID_ARGUMENT", f"unknown output(s) {unknown}; the model's outputs are {names}")
        down = self.down()
        if down:
            raise Refused("UNAVAILABLE", f"{down} is down; retry shortly")
        if self.closing:
            raise Refused("UNAVAILABLE", f"{self.closing}; retry shortly")
        in_flight = self.batcher.in_flight if self.batcher is not None else len(self.pending)
        if in_flight >= self.model.max_in_flight:
            raise Refused(
                "RESOURCE_EXHAUSTED",
                f"{in_flight} requests in flight, the endpoint's limit (--max-in-flight); retry shortly",
            )
        if self.batcher is None:
            outputs, ran = await self._chain(arrays, timeout)
            waited_s = 0.0
        else:
            try:
                outputs, ran, waited_s = await self.batcher.submit(arrays, timeout)
            except TimeoutError:
                raise Refused("DEADLINE_EXCEEDED", f"no result within {timeout:.1f} s") from None
        missing = [name for name in wanted if name not in outputs]
        if missing:
            raise Refused("INTERNAL", f"the last stage sent no output(s) {missing}")
        return {name: outputs[name] for name in wanted}, ran, waited_s

    async def _chain(
        self, arrays: dict[str, np.ndarray], timeout: float
    ) -> tuple[dict[str, np.ndarray], tuple[Sequence[Any], float]]:
        """Send `arrays` through the chain and wait (at most `timeout`) for the last stage's outputs;
        returns them and (stage timings, seconds spent reading the result)."""
        request_id = uuid.uuid4().hex
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        started = time.perf_counter()
        sending: asyncio.Future[None] | None = None
        try:
            message = frame(
                stage_pb2.StageRequest(
                    request_id=request_id,
                    deadline_unix_ns=time.time_ns() + int(timeout * 1e9),
                    reply_to=self.address,
                    sent_unix_ns=time.time_ns(),
                ),
                arrays,
            )
            sending = asyncio.ensure_future(self.links.get(self.model.stages[0][1], "process").send(message))
            # A request failed while its send waits (a stage went down, the server is closing) answers now.
            done, _ = await asyncio.wait(
                {sending, future}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if sending in done:
                sending.result()  # raises PeerUnavailable
            else:
                sending.cancel()
            remaining_s = timeout - (time.perf_counter() - started)
            delivered = await asyncio.wait_for(future, max(remaining_s, 0.0) if not future.done() else None)
        except PeerUnavailable as exc:
            raise Refused("UNAVAILABLE", f"stage 0 is unreachable: {exc}") from None
        except TimeoutError:
            await self._cancel_downstream(request_id)
            raise Refused("DEADLINE_EXCEEDED", f"no result within {timeout:.1f} s") from None
        except asyncio.CancelledError:  # the client cancelled: stop the chain working on it
            if sending is not None:
                sending.cancel()
            await self._cancel_downstream(request_id)
            raise
        finally:
            self.pending.pop(request_id, None)
        reply = delivered.message
        if not reply.ok:
            raise Refused(reply.error_code if reply.error_code in STATUS else "INTERNAL", reply.error)
        self.observed.stage_times(reply.timings)
        reading = time.perf_counter()
        try:
            outputs = delivered.arrays()
        except ValueError as exc:
            raise Refused("INTERNAL", f"stage {reply.stage} sent a malformed result: {exc}") from None
        return outputs, (reply.timings, time.perf_counter() - reading)

    async def _cancel_downstream(self, request_id: str) -> None:
        """Tell the chain to drop `request_id` (best effort: a dead stage 0 has nothing to drop)."""
        with contextlib.suppress(PeerUnavailable):
            cancel = Frame(stage_pb2.StageRequest(request_id=request_id, cancel=True))
            await self.links.get(self.model.stages[0][1], "process").send(cancel, timeout=1.0)

    # --- result sink ----------------------------------------------------------------------------------
    async def Deliver(
        self, request_iterator: AsyncIterator[Frame], context: Any
    ) -> AsyncIterator[stage_pb2.Ack]:
        """Results (or failures) from the stages, matched to waiting requests."""
        last = stage_identity(len(self.model.stages) - 1)
        refused = self.tls.peer_refused(context, last) if self.tls is not None else None
        if refused:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused)
        side, offer = (
            self.side.expect(context.invocation_metadata(), stage_pb2.StageReply) if self.side else (None, ())
        )
        await context.send_initial_metadata(shm.metadata() + offer)
        reader = asyncio.create_task(self._deliver_side(side)) if side is not None else None
        try:
            async for reply in request_iterator:
                yield self._delivered(reply)
        finally:
            if reader is not None:
                reader.cancel()
            if self.side is not None:
                self.side.forget(side)

    async def _deliver_side(self, side: asyncio.Future[bulk.Channel]) -> None:
        """Large results arrive on the Deliver stream's side connection (runtime.bulk)."""
        channel = await side
        while (reply := await channel.receive()) is not None:
            self._delivered(reply)

    def _delivered(self, reply: Frame) -> stage_pb2.Ack:
        """Hand a delivered result to the request waiting for it."""
        request_id = reply.message.request_id
        future = self.pending.get(request_id)
        accepted = future is not None and not future.done()
        if accepted and reply.problem:  # the result's elements could not be read
            failed = stage_pb2.StageReply(
                request_id=request_id,
                ok=False,
                error_code="UNAVAILABLE",
                error=f"the result of stage {reply.message.stage}: {reply.problem}",
            )
            future.set_result(Frame(failed))  # type: ignore[union-attr]
        elif accepted:
            future.set_result(reply)  # type: ignore[union-attr]
        return stage_pb2.Ack(request_id=request_id, accepted=accepted)

    # --- health ---------------------------------------------------------------------------------------
    async def Check(self, request: Any, context: Any) -> health_pb2.HealthCheckResponse:
        """grpc.health.v1: SERVING when every stage is up."""
        serving = (
            health_pb2.HealthCheckResponse.SERVING
            if all(self.stage_up)
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        return health_pb2.HealthCheckResponse(status=serving)

    def start_watching(self, period_s: float = 0.25) -> None:
        """Start the stage health watcher."""
        self.loop = asyncio.get_running_loop()
        self.watcher = asyncio.create_task(self._watch(period_s))

    async def _watch(self, period_s: float) -> None:
        try:
            while True:
                await self.refresh_stats(timeout_s=max(period_s * 4, 1.0))
                await asyncio.sleep(period_s)
        finally:
            for channel in self._channels:
                await channel.close()

    async def refresh_stats(self, timeout_s: float = 1.0) -> None:
        """Ask every stage for its Stats; a stage that does not answer is down, and the requests in flight
        fail at once (they could otherwise wait for a result that will never come)."""
        if not self._channels:
            self._channels = [open_channel(address, self.tls) for _, address in self.model.stages]
        for index, channel in enumerate(self._channels):
            try:
                self.stats[index] = await stage_pb2_grpc.StageWorkerStub(channel).Stats(
                    stage_pb2.StatsRequest(), timeout=timeout_s
                )
                up = True
            except grpc.aio.AioRpcError:
                up = False
            if self.stage_up[index] and not up:
                self.fail_pending(f"stage {index} ({self.model.stages[index][0]}) went down")
                shm.sweep()  # a stage that died may have left shared segments behind
            self.stage_up[index] = up

    async def close(self, reason: str, timeout_s: float = 2.0) -> None:
        """Refuse new requests and fail those in flight, both with UNAVAILABLE, and wait (at most
        `timeout_s`) until every handler has answered: call before stopping the server, so no client
        sees its call cut off (CANCELLED)."""
        self.closing = reason
        if self.side is not None:
            self.side.close()
            self.side = None
        deadline = time.monotonic() + timeout_s
        while (self.pending or (self.batcher is not None and self.batcher.in_flight)) and (
            time.monotonic() < deadline
        ):
            self.fail_pending(reason)
            await asyncio.sleep(0.01)

    def fail_pending(self, reason: str) -> None:
        """Fail every request in flight with UNAVAILABLE (also those waiting for a batch)."""
        if self.batcher is not None:
            self.batcher.fail_waiting(Refused("UNAVAILABLE", f"{reason}; retry shortly"))
        for request_id, future in list(self.pending.items()):
            if not future.done():
                future.set_result(
                    Frame(
                        stage_pb2.StageReply(
                            request_id=request_id, ok=False, error_code="UNAVAILABLE", error=reason
                        )
                    )
                )

    def down(self) -> str:
        """The stages that are down now, in words ('' when every stage is up)."""
        down = [f"stage {i} ({self.model.stages[i][0]})" for i, up in enumerate(self.stage_up) if not up]
        return ", ".join(down)

    async def _check_model(self, name: str, context: Any, version: str = "") -> None:
        """`check_model`, answered with gRPC's NOT_FOUND."""
        try:
            self.check_model(name, version)
        except Refused as refused:
            await context.abort(grpc.StatusCode.NOT_FOUND, refused.message)

    def check_model(self, name: str, version: str = "") -> None:
        """Refused NOT_FOUND for another model, or a version of it this server does not serve ('' = any)."""
        if name != self.model.name:
            raise Refused("NOT_FOUND", f"unknown model '{name}'; this server serves '{self.model.name}'")
        if version and version != self.model.version:
            raise Refused(
                "NOT_FOUND",
                f"model '{name}' has no version '{version}'; this server serves version {self.model.version}",
            )


async def start_endpoint(
    model: ModelSpec,
    port: int,
    host: str = "127.0.0.1",
    advertise: str | None = None,
    tls: TlsFiles | None = None,
    sink_port: int | None = None,
    access: ServerAccess | None = None,
    max_request_bytes: int | None = None,
    side_port: int = 0,
    advertise_host: str | None = None,
) -> tuple[grpc.aio.Server, Endpoint, int]:
    """Start the endpoint server; returns (server, servicer, bound client port). `advertise` is the address
    the last stage delivers results to (default: this host and port). `access` secures the client port
    (TLS, client certificates, bearer token). With `tls` (mutual TLS between stages), or with TLS on the
    client port, stages deliver results to a port of their own, `sink_port` (default: port + 1), over
    mutual TLS when `tls` is given. Messages over `max_request_bytes` (requests, and results delivered
    to this server) are refused by gRPC with RESOURCE_EXHAUSTED. Without `tls`, large results arrive on
    side connections (runtime.bulk) on `side_port` (0: any free port). `advertise_host` names this host to
    the stages when `advertise` is not given (default: `host`, or 127.0.0.1 for a wildcard)."""
    keep_large_buffers()
    shm.sweep()
    access = access or ServerAccess()
    options = list(CHANNEL_OPTIONS)
    if max_request_bytes is not None:
        options = [o for o in options if o[0] != "grpc.max_receive_message_length"]
        options.append(("grpc.max_receive_message_length", max_request_bytes))
    server = grpc.aio.server(options=options, interceptors=access.interceptors())
    bound = bind_port(server, host, port, credentials=access.credentials())
    local_host = advertise_host or ("127.0.0.1" if host in ("0.0.0.0", "[::]") else host)
    local = f"{local_host}:{bound}"
    if tls is not None or access.tls:
        sink = bind_port(
            server, host, sink_port if sink_port is not None else (bound + 1 if port else 0), tls
        )
        local = f"{local_host}:{sink}"
    endpoint = Endpoint(model, advertise or local, tls)
    if tls is None:
        endpoint.side = bulk.listen(host, max_request_bytes or bulk.MAX_BYTES, side_port)
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(endpoint, server)
    server.add_generic_rpc_handlers((sink_handler(endpoint.Deliver),))
    health_pb2_grpc.add_HealthServicer_to_server(endpoint, server)
    await server.start()
    endpoint.start_watching()
    return server, endpoint, bound
