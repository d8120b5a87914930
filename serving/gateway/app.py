"""The gateway's HTTP surface (OpenAI's): ``GET /v1/models[/{id}]``, ``POST
/v1/completions``, ``POST /v1/chat/completions``; ``/health`` and ``/metrics`` when it
runs alone.

A request is authenticated (an API token, or the browser's session with its CSRF token),
its ``model`` looked up among the caller's deployments (anything else is a 404, in
OpenAI's error format), rate-limited per project, and sent to a replica (``router``):

- a replica that refuses the connection, fails before its first byte, or answers 503
  (draining, loading) is taken out and the request goes to another one, up to
  ``CP_GATEWAY_RETRIES`` times; once a stream has started, a failure ends it with an SSE
  error event;
- a 429 from a replica sends the request to another one; when every replica's queue is
  full the client gets the 429 with ``Retry-After``;
- with no replica ready (a cold start from zero, a replica coming back), the request
  waits for one, up to ``CP_GATEWAY_COLD_START_TIMEOUT`` and the request timeout;
- the replica's own 400/404/504 answers pass through unchanged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator

# httpx2 (the maintained httpx fork): httpcore's pool costs O(connections^2) per request,
# which held the gateway to ~0.2x of direct at 64 in flight (bench/serving_gateway.py).
import httpx2 as httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as Path

from serving.gateway.auth import Authenticator, Principal, Unauthorized
from serving.gateway.metrics import GatewayMetrics
from serving.gateway.router import Ambiguous, Router, affinity_key
from serving.replica.errors import error_response, sse_error

log = logging.getLogger("serving.gateway")
PASS_HEADERS = ("content-type", "retry-after", "cache-control")
UPSTREAM_ERRORS = (httpx.TransportError, httpx.DecodingError)


class RateLimits:
    """A token bucket per project: ``max_requests_per_minute`` of the project, with a
    burst of up to a tenth of a minute's worth (at least 1). Kept per gateway process."""

    def __init__(self) -> None:
        self._buckets: dict[int, tuple[float, float]] = {}

    def take(self, project_id: int, per_minute: int | None) -> float:
        """0 when the request may go; else the seconds until it may."""
        if not per_minute:
            return 0.0
        rate = per_minute / 60.0
        burst = max(1.0, per_minute / 10.0)
        now = time.monotonic()
        tokens, at = self._buckets.get(project_id, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens >= 1.0:
            self._buckets[project_id] = (tokens - 1.0, now)
            return 0.0
        self._buckets[project_id] = (tokens, now)
        return (1.0 - tokens) / rate


class Gateway:
    def __init__(self) -> None:
        self.auth = Authenticator()
        self.router = Router(on_auth_change=self.auth.clear)
        self.limits = RateLimits()
        self.metrics = GatewayMetrics()
        self._started: asyncio.Future | None = None

    async def ensure_started(self) -> None:
        """Background work starts with the first request (the web server runs without
        ASGI lifespan events)."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        self.router.start()
        await self.router.refresh()

    async def principal(self, request: Request) -> Principal:
        await self.ensure_started()
        client = request.client.host if request.client else None
        headers = dict(request.scope["headers"])
        return await self.auth.authenticate(headers, client)

    # --- /v1/models -------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        try:
            principal = await self.principal(request)
        except Unauthorized as exc:
            return error_response(401, str(exc))
        routes = self.router.visible(principal)
        names = [r.name for r in routes]
        data = [
            {
                "id": r.name if names.count(r.name) == 1 else f"{r.project}/{r.name}",
                "object": "model",
                "created": 0,
                "owned_by": r.project,
            }
            for r in routes
        ]
        return JSONResponse({"object": "list", "data": data})

    async def model(self, request: Request) -> Response:
        try:
            principal = await self.principal(request)
        except Unauthorized as exc:
            return error_response(401, str(exc))
        name = request.path_params["name"]
        try:
            route = self.router.lookup(principal, name)
        except Ambiguous as exc:
            return error_response(
                400, f"`{name}` is a deployment of projects {exc}: use project/name.", "model"
            )
        if route is None:
            return _not_found(name)
        return JSONResponse(
            {"id": name, "object": "model", "created": 0, "owned_by": route.project}
        )

    # --- completions ------------------------------------------------------------------

    def endpoint(self, path: str):
        async def handler(request: Request) -> Response:
            t0 = time.monotonic()
            response, label = await self._handle(request, path, t0)
            if label:
                self.metrics.requests.labels(label, str(response.status_code)).inc()
                if not isinstance(response, StreamingResponse):
                    self.metrics.latency.labels(label).observe(time.monotonic() - t0)
            return response

        return handler

    async def _handle(self, request: Request, path: str, t0: float) -> tuple[Response, str]:
        try:
            principal = await self.principal(request)
        except Unauthorized as exc:
            return error_response(401, str(exc)), ""
        body = await _read_body(request, settings.GATEWAY_MAX_BODY_BYTES)
        if body is None:
            limit = settings.GATEWAY_MAX_BODY_BYTES
            return error_response(413, f"The request body is over {limit} bytes."), ""
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return error_response(400, f"The request body is not valid JSON: {exc}"), ""
        except RecursionError:
            return error_response(400, "The request body is nested too deeply."), ""
        if not isinstance(payload, dict):
            return error_response(400, "The request body must be a JSON object."), ""
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            return error_response(400, "'model' is required: a deployment's name.", "model"), ""
        try:
            route = self.router.lookup(principal, model)
        except Ambiguous as exc:
            return error_response(
                400, f"`{model}` is a deployment of projects {exc}: send project/name.", "model"
            ), ""
        if route is None:
            return _not_found(model), ""
        wait = self.limits.take(route.project_id, route.rate_limit)
        if wait:
            return error_response(
                429,
                f"Project {route.project} is over its limit of {route.rate_limit} requests "
                "per minute; retry later",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            ), route.name
        if model != route.name:  # project/name: the replica knows its plain name
            payload["model"] = route.name
            body = json.dumps(payload).encode()
        stream = payload.get("stream") is True
        key = affinity_key(payload) if route.prefix_affinity else None
        return await self._forward(route, path, body, stream, t0, key), route.name

    async def _forward(
        self, route, path: str, body: bytes, stream: bool, t0: float, key: bytes | None = None
    ) -> Response:
        router = self.router
        client = router.client
        assert client is not None
        tried: set[str] = set()  # endpoint URLs (a restarted replica has a new one)
        busy: Response | None = None
        why = "no replica is ready"
        read_timeout = route.request_timeout + 10.0
        wait_until = t0 + min(settings.GATEWAY_COLD_START_TIMEOUT, route.request_timeout)
        next_wake = 0.0
        while True:
            endpoint = router.pick(route, tried, key)
            if endpoint is None:
                if busy is not None:
                    return busy
                if len(tried) > settings.GATEWAY_RETRIES:
                    break
                fresh = router.table.get(route.project_id, {}).get(route.name)
                if fresh is None:  # deleted meanwhile
                    return _not_found(route.name)
                if fresh.state == "FAILED" and not fresh.endpoints:
                    return error_response(
                        503, f"Deployment {route.name} cannot start its replicas; see its events."
                    )
                left = wait_until - time.monotonic()
                if fresh is route or not [e for e in fresh.endpoints if e.url not in tried]:
                    if left <= 0:
                        break
                    if fresh.scale_to_zero and time.monotonic() >= next_wake:
                        # Again every few seconds: the request is still waiting.
                        next_wake = time.monotonic() + 5.0
                        await sync_to_async(_wake, thread_sensitive=False)(route.deployment_id)
                    await router.wait_for_change(min(left, 1.0))
                route = router.table.get(route.project_id, {}).get(route.name) or route
                continue
            if len(tried) > settings.GATEWAY_RETRIES:
                break
            if tried:
                self.metrics.retries.labels(route.name, why.split(":")[0]).inc()
            tried.add(endpoint.url)
            router.begin(endpoint)
            done = True
            try:
                request = client.build_request(
                    "POST",
                    endpoint.url + path,
                    content=body,
                    headers={
                        "authorization": f"Bearer {endpoint.key}",
                        "content-type": "application/json",
                    },
                    timeout=httpx.Timeout(connect=2.0, read=read_timeout, write=30.0, pool=None),
                )
                try:
                    upstream = await client.send(request, stream=True)
                except UPSTREAM_ERRORS as exc:
                    router.take_out(endpoint)
                    why = f"replica r{endpoint.number} failed: {type(exc).__name__}"
                    continue
                status = upstream.status_code
                if status in (401, 502, 503):
                    await upstream.aclose()
                    why = f"replica r{endpoint.number} answered {status}"
                    if status == 401:  # a stale key: the replica restarted
                        await router.refresh()
                    else:
                        router.take_out(endpoint)
                    continue
                headers = {k: v for k, v in upstream.headers.items() if k in PASS_HEADERS}
                headers["x-cp-replica"] = f"r{endpoint.number}"
                headers["x-cp-revision"] = str(endpoint.revision)
                if status == 429:
                    content = await upstream.aread()
                    await upstream.aclose()
                    busy = Response(content, status, headers=headers)
                    why = "replica queue full"
                    continue
                is_stream = (
                    stream and status == 200 and "event-stream" in headers.get("content-type", "")
                )
                if not is_stream:
                    try:
                        content = await upstream.aread()
                    except UPSTREAM_ERRORS as exc:
                        router.take_out(endpoint)
                        why = f"replica r{endpoint.number} failed: {type(exc).__name__}"
                        continue
                    finally:
                        await upstream.aclose()
                    return Response(content, status, headers=headers)
                chunks = upstream.aiter_raw()
                try:
                    first = await chunks.__anext__()
                except (StopAsyncIteration, *UPSTREAM_ERRORS) as exc:
                    await upstream.aclose()
                    router.take_out(endpoint)
                    why = f"replica r{endpoint.number} failed: {type(exc).__name__}"
                    continue
                self.metrics.ttfb.labels(route.name).observe(time.monotonic() - t0)
                done = False  # the relay ends it
                return StreamingResponse(
                    self._relay(route.name, endpoint, upstream, first, chunks, t0),
                    status_code=200,
                    headers={**headers, "X-Accel-Buffering": "no"},
                )
            finally:
                if done:
                    router.end(endpoint)
        return error_response(
            503,
            f"No replica of {route.name} could take the request ({why}); retry later",
            headers={"Retry-After": "1"},
        )

    async def _relay(
        self,
        name: str,
        endpoint,
        upstream: httpx.Response,
        first: bytes,
        chunks: AsyncIterator[bytes],
        t0: float,
    ) -> AsyncIterator[bytes]:
        try:
            yield first
            try:
                async for chunk in chunks:
                    yield chunk
            except UPSTREAM_ERRORS as exc:
                self.router.take_out(endpoint)
                log.warning("replica r%s failed mid-stream: %s", endpoint.number, exc)
                yield sse_error(
                    502, f"The replica serving this stream failed ({type(exc).__name__}); retry"
                )
        finally:
            await upstream.aclose()
            self.router.end(endpoint)
            self.metrics.latency.labels(name).observe(time.monotonic() - t0)


def _wake(deployment_id: int) -> None:
    from django.db import close_old_connections

    from serving.deployments.services import wake

    close_old_connections()
    wake(deployment_id)


def _not_found(model: str) -> Response:
    return error_response(
        404, f"The model `{model}` does not exist or you do not have access to it.", "model"
    )


async def _read_body(request: Request, limit: int) -> bytes | None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


def build_app(gateway: Gateway | None = None, standalone: bool = False) -> Starlette:
    gateway = gateway or Gateway()

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return error_response(status, f"{request.method} {request.url.path}: not found")

    async def health(request: Request) -> Response:
        await gateway.ensure_started()
        return JSONResponse(
            {"status": "ok", "deployments": sum(map(len, gateway.router.table.values()))}
        )

    async def metrics(request: Request) -> Response:
        return Response(gateway.metrics.render(), media_type="text/plain; version=0.0.4")

    routes = [
        Path("/v1/models", gateway.models, methods=["GET"]),
        Path("/v1/models/{name:path}", gateway.model, methods=["GET"]),
        Path("/v1/completions", gateway.endpoint("/v1/completions"), methods=["POST"]),
        Path("/v1/chat/completions", gateway.endpoint("/v1/chat/completions"), methods=["POST"]),
    ]
    if standalone:
        routes += [Path("/health", health), Path("/metrics", metrics)]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    app.state.gateway = gateway
    return app


#: The gateway the control plane's web server mounts at /v1 (one per process).
gateway = Gateway()
application = build_app(gateway)


def render_metrics() -> bytes:
    return gateway.metrics.render()
