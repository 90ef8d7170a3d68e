"""The KServe v2 HTTP/REST endpoint beside the gRPC one: health, server and model metadata, Triton's model
configuration, statistics and repository index, and inference with JSON or binary tensors.

The same Endpoint answers both protocols, so validation, limits, metrics and statistics are shared. aiohttp's
low-level server does the HTTP (parsing, keep-alive, TLS, header limits); this module routes the KServe v2
paths and answers every failure with KServe's error JSON (`{"error": "..."}`) and the HTTP status of its
gRPC code, including requests aiohttp could not parse. A client that sends its headers or body too slowly
is cut off after `read_timeout_s`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import LineTooLong

from nndeploy.runtime.access import ServerAccess
from nndeploy.runtime.endpoint import Endpoint
from nndeploy.runtime.links import PortInUse
from nndeploy.runtime.rest import HEADER_LENGTH, encode_response, parse_request
from nndeploy.runtime.served import Refused, Request, timeout_parameter
from nndeploy.runtime.triton_model import message_json, model_config_json, statistics_json

# The HTTP status of each gRPC status code the endpoint answers with.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
CONTENT_TYPES = ("application/json", "application/octet-stream")
READ_TIMEOUT_S = 30.0

_MODEL = r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"


class HttpError(Exception):
    """An HTTP answer other than 200, with KServe's error JSON."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """KServe v2's error body with `status`."""
    return web.json_response({"error": message}, status=status, headers=headers)


@dataclass(frozen=True)
class HttpLimits:
    """What one request may take: its body's size and the time its headers and body may take to arrive."""

    max_request_bytes: int = 1 << 30
    read_timeout_s: float = READ_TIMEOUT_S


class HttpApi:
    """Routes the KServe v2 REST paths to the endpoint."""

    def __init__(self, endpoint: Endpoint, access: ServerAccess | None, limits: HttpLimits) -> None:
        self.endpoint = endpoint
        self.token = b"Bearer " + access.token if access is not None and access.token else None
        self.limits = limits
        self.routes: list[tuple[re.Pattern[str], str, Callable[..., Awaitable[web.StreamResponse]]]] = [
            (re.compile(pattern + r"/?"), method, handler)
            for pattern, method, handler in (
                (r"/v2/health/live", "GET", self.live),
                (r"/v2/health/ready", "GET", self.ready),
                (r"/v2", "GET", self.server_metadata),
                (r"/v2/models/stats", "GET", self.all_statistics),
                (r"/v2/repository/index", "POST", self.repository_index),
                (_MODEL, "GET", self.model_metadata),
                (_MODEL + r"/ready", "GET", self.model_ready),
                (_MODEL + r"/config", "GET", self.model_config),
                (_MODEL + r"/stats", "GET", self.model_statistics),
                (_MODEL + r"/infer", "POST", self.infer),
            )
        ]

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one request; every failure becomes KServe's error JSON."""
        try:
            return await self._route(request)
        except HttpError as exc:
            response = error_response(exc.status, exc.message, exc.headers)
            if exc.status in (408, 413):  # the body was not read to its end: this connection is done
                response.force_close()
            return response
        except Refused as refused:
            return error_response(HTTP_STATUS.get(refused.code, 500), refused.message)

    async def _route(self, request: web.BaseRequest) -> web.StreamResponse:
        allowed: list[str] = []
        for pattern, method, handler in self.routes:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            if request.method != method and not (method == "GET" and request.method == "HEAD"):
                allowed.append(method)
                continue
            if not request.path.startswith("/v2/health/"):
                self._check_token(request)
            return await handler(request, **match.groupdict())
        if allowed:
            raise HttpError(
                405,
                f"{request.method} is not allowed on {request.path}; use {' or '.join(allowed)}",
                {"Allow": ", ".join(allowed)},
            )
        raise HttpError(404, f"no KServe v2 resource at {request.path} (see GET /v2)")

    def _check_token(self, request: web.BaseRequest) -> None:
        """401 without the bearer token, when the endpoint requires one (health stays open for probes)."""
        if self.token is None:
            return
        given = request.headers.get("Authorization", "").encode("latin-1", "replace")
        if not hmac.compare_digest(given, self.token):
            raise HttpError(
                401,
                "a valid bearer token is required (Authorization: Bearer <token>)",
                {"WWW-Authenticate": "Bearer"},
            )

    # --- health and metadata --------------------------------------------------------------------------
    async def live(self, request: web.BaseRequest) -> web.Response:
        """200 while the process serves."""
        return web.json_response({"live": True})

    async def ready(self, request: web.BaseRequest) -> web.Response:
        """200 when every stage is up; 400 (KServe's "false") naming those that are down."""
        down = self.endpoint.down()
        if down:
            raise HttpError(400, f"not ready: {down} is down")
        return web.json_response({"ready": True})

    async def server_metadata(self, request: web.BaseRequest) -> web.Response:
        """The server's name, version and the protocol extensions it implements."""
        from nndeploy import __version__

        return web.json_response({"name": "nndeploy", "version": __version__, "extensions": list(EXTENSIONS)})

    async def model_metadata(self, request: web.BaseRequest, name: str, version: str | None) -> web.Response:
        """The model's inputs and outputs with KServe datatypes and shapes."""
        self.endpoint.check_model(name, version or "")
        return _proto_json(self.endpoint.metadata())

    async def model_ready(self, request: web.BaseRequest, name: str, version: str | None) -> web.Response:
        """200 when the model is ready, 400 naming the stages that are down."""
        self.endpoint.check_model(name, version or "")
        return await self.ready(request)

    async def model_config(self, request: web.BaseRequest, name: str, version: str | None) -> web.Response:
        """Triton's model configuration."""
        self.endpoint.check_model(name, version or "")
        return web.json_response(model_config_json(self.endpoint.config()))

    async def model_statistics(
        self, request: web.BaseRequest, name: str, version: str | None
    ) -> web.Response:
        """Triton's statistics of the model."""
        self.endpoint.check_model(name, version or "")
        return web.json_response(statistics_json(self.endpoint.model_statistics()))

    async def all_statistics(self, request: web.BaseRequest) -> web.Response:
        """Triton's statistics of every model (the one served)."""
        return web.json_response(statistics_json(self.endpoint.model_statistics()))

    async def repository_index(self, request: web.BaseRequest) -> web.Response:
        """Triton's repository index: a JSON list of {name, version, state, reason}."""
        body = await self._body(request) if request.can_read_body else b""
        try:
            ready = bool(json.loads(body or b"{}").get("ready", False))
        except (ValueError, AttributeError):
            raise HttpError(400, 'the body must be a JSON object such as {"ready": true}') from None
        index = self.endpoint.repository_index(ready)
        return web.json_response([message_json(m) for m in index.models])

    # --- inference ------------------------------------------------------------------------------------
    async def infer(self, request: web.BaseRequest, name: str, version: str | None) -> web.Response:
        """Run one request, JSON or with binary tensors, through the chain."""
        content_type = request.headers.get("Content-Type")
        if content_type is not None and content_type.split(";")[0].strip().lower() not in CONTENT_TYPES:
            raise HttpError(
                415, f"Content-Type {content_type!r} is not accepted; send {' or '.join(CONTENT_TYPES)}"
            )
        body = await self._body(request)
        header_length = request.headers.get(HEADER_LENGTH)
        decoded: list[Any] = []

        def decode() -> Request:
            rest = parse_request(body, header_length)
            decoded.append(rest)
            return Request(rest.inputs, rest.outputs, timeout_parameter(rest.parameters))

        outputs = await self.endpoint.infer(name, version or "", decode)
        model = self.endpoint.model
        payload, json_length = encode_response(model.name, model.version, decoded[0], outputs)
        if json_length is None:
            return web.Response(body=payload, content_type="application/json")
        return web.Response(
            body=payload,
            content_type="application/octet-stream",
            headers={HEADER_LENGTH: str(json_length)},
        )

    async def _body(self, request: web.BaseRequest) -> bytes:
        """The request body: 413 over the size limit, 408 when it does not arrive within the timeout."""
        limit = self.limits.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            raise HttpError(
                413,
                f"the body is {request.content_length} bytes, over the limit of {limit} (--max-request-mb)",
            )

        async def read() -> bytes:
            chunks: list[bytes] = []
            size = 0
            async for chunk in request.content.iter_chunked(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise HttpError(413, f"the body is over the limit of {limit} bytes (--max-request-mb)")
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            return await asyncio.wait_for(read(), self.limits.read_timeout_s)
        except TimeoutError:
            raise HttpError(
                408,
                f"the body did not arrive within {self.limits.read_timeout_s:g} s (shorter than its "
                "Content-Length, or sent too slowly)",
            ) from None


# What GET /v2 lists: Triton's extension names for what this endpoint implements.
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics", "model_repository")


def _proto_json(message: Any) -> web.Response:
    return web.json_response(message_json(message))


class _Protocol(web_protocol.RequestHandler):
    """aiohttp's connection handler, answering what it cannot parse with KServe's error JSON."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """KServe's error JSON for a request aiohttp could not parse (431 for an oversized header line)."""
        if status >= 500:
            self.log_exception("Error handling request", exc_info=exc)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was sent already; cannot send the error")
        if isinstance(exc, LineTooLong):
            status, text = 431, f"a request line or header is too long: {exc.message}"
        else:
            text = f"the request is not valid HTTP: {getattr(exc, 'message', None) or message or exc}"
        response = error_response(status, text)
        response.force_close()
        return response


class _Server(web.Server):
    """aiohttp's low-level server with _Protocol as its connection handler."""

    def __call__(self) -> web_protocol.RequestHandler:
        # Server.__call__ builds the RequestHandler from these two attributes; a subclass cannot reach
        # handle_error otherwise.
        return _Protocol(self, loop=self._loop, **self._kwargs)  # type: ignore[attr-defined]


@dataclass
class HttpServer:
    """A running HTTP endpoint: stop it with `stop()`."""

    runner: web.ServerRunner
    port: int

    async def stop(self) -> None:
        """Close the listening socket and every connection."""
        await self.runner.cleanup()


async def start_http(
    endpoint: Endpoint,
    port: int,
    host: str = "127.0.0.1",
    access: ServerAccess | None = None,
    limits: HttpLimits | None = None,
) -> HttpServer:
    """Serve the KServe v2 REST API of `endpoint` on `host:port` (0: a free port), with the same TLS,
    client certificates and bearer token as its gRPC port."""
    limits = limits or HttpLimits()
    server = _Server(
        HttpApi(endpoint, access, limits),
        handler_cancellation=True,  # a client that hangs up cancels its request down the chain
        keepalive_timeout=limits.read_timeout_s,  # also cuts off a client that never finishes its headers
        # After an early answer (413, 408) the rest of a body is read and dropped for at most this long, so
        # the client sees the answer instead of a reset.
        lingering_time=min(limits.read_timeout_s, 10.0),
        access_log=None,
    )
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=access.ssl_context() if access is not None else None)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise PortInUse(
            f"cannot listen for HTTP on {host}:{port} ({exc.strerror or exc}); "
            "pass another --http-port/--host"
        ) from None
    bound = runner.addresses[0][1]
    return HttpServer(runner, bound)
