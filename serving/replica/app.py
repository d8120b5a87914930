"""The replica's ASGI app (Starlette): routes, auth, readiness gates and error mapping.

Owns the HTTP surface: `GET /health` (200 only when warmed up and not draining),
`GET /metrics` (Prometheus text), `GET /v1/models[/{id}]`, `POST /v1/completions`,
`POST /v1/chat/completions`. Every /v1 route checks the bearer key (`--api-key`), then
readiness and drain (503 with Retry-After), then the body; every failure is an
OpenAI-style error body with the right status (400 names the bad field), and an
unexpected exception is a 500 body, never a dropped connection.
"""

from __future__ import annotations

import hmac
import logging
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serving.replica import openai_format as fmt
from serving.replica.generate import handle_generate, read_json
from serving.replica.state import ReplicaState
from serving.replica.validation import BadField, parse_chat, parse_completion

log = logging.getLogger("serving.replica")


def _auth_error(request: Request, state: ReplicaState) -> Response | None:
    if not state.api_key:
        return None
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), state.api_key):
        return None
    message = "Incorrect API key provided" if header else "Missing bearer API key"
    return fmt.error_response(401, f"{message} (send 'Authorization: Bearer <key>')")


def _gate(request: Request, state: ReplicaState) -> Response | None:
    denied = _auth_error(request, state)
    if denied is not None:
        return denied
    if state.load_error:
        return fmt.error_response(503, f"the model failed to load: {state.load_error}")
    if not state.ready:
        return fmt.error_response(503, "the model is still loading", headers={"Retry-After": "1"})
    if state.engine is not None and not state.engine.alive:
        return fmt.error_response(503, "the engine thread has stopped; restart the replica")
    if state.draining:
        return fmt.error_response(
            503,
            "the replica is shutting down; send the request elsewhere",
            headers={"Retry-After": "1"},
        )
    return None


def build_app(state: ReplicaState) -> Starlette:
    """The replica's Starlette application over `state`."""
    metrics = state.metrics

    async def health(request: Request) -> Response:
        engine_dead = state.ready and state.engine is not None and not state.engine.alive
        if state.ready and not state.draining and not engine_dead:
            return JSONResponse({"status": "ok"})
        status = "error" if state.load_error or engine_dead else "loading"
        status = "draining" if state.draining else status
        return JSONResponse({"status": status}, status_code=503)

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def model_card() -> dict:
        report = state.report
        return {
            "id": state.served_model_name,
            "object": "model",
            "created": state.created,
            "owned_by": "controlplane",
            "root": report.model if report else None,
            "max_model_len": report.max_model_len if report else None,
        }

    async def models(request: Request) -> Response:
        denied = _gate(request, state)
        if denied is not None:
            return denied
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def model(request: Request) -> Response:
        denied = _gate(request, state)
        if denied is not None:
            return denied
        if request.path_params["name"] != state.served_model_name:
            return fmt.error_response(
                404, f"The model `{request.path_params['name']}` does not exist.", "model"
            )
        return JSONResponse(model_card())

    def endpoint(chat: bool):
        name = "chat" if chat else "completions"
        parse = parse_chat if chat else parse_completion

        async def handler(request: Request) -> Response:
            t0 = time.monotonic()
            state.begin()
            response: Response | None = None
            try:
                response = _gate(request, state)
                if response is None:
                    parsed = parse(await read_json(request, state.max_body_bytes))
                    if parsed.model != state.served_model_name:
                        response = fmt.error_response(
                            404,
                            f"The model `{parsed.model}` does not exist; this replica serves "
                            f"`{state.served_model_name}`",
                            "model",
                        )
                    else:
                        response = await handle_generate(request, state, parsed)
            except BadField as exc:
                response = fmt.error_response(exc.status, str(exc), exc.field)
            except Exception as exc:
                log.exception("%s failed", name)
                response = fmt.error_response(500, f"internal error: {type(exc).__name__}: {exc}")
            finally:
                state.end()
                status = response.status_code if response is not None else 500
                metrics.requests.labels(name, str(status)).inc()
                if response is not None and response.media_type != "text/event-stream":
                    metrics.latency.labels(name).observe(time.monotonic() - t0)
            return response

        return handler

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return fmt.error_response(
            exc.status_code, f"{request.method} {request.url.path}: {exc.detail}"
        )

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return fmt.error_response(500, f"internal error: {type(exc).__name__}")

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{name:path}", model, methods=["GET"]),
        Route("/v1/completions", endpoint(False), methods=["POST"]),
        Route("/v1/chat/completions", endpoint(True), methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
