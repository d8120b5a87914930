"""Websocket consumers of the monitoring app.

``PingConsumer`` (``/ws/ping/``) proves the whole path: the socket, authentication, and a
message that leaves through the channel layer (Redis) and comes back before the reply.

The telemetry consumers -- ``/ws/telemetry/`` (cluster), ``/ws/telemetry/hosts/<id>/``
and ``/ws/telemetry/jobs/<id>/`` -- send a ``snapshot`` (the current state) first on every
connect, then each new sample. Each connection has a bounded buffer: a browser that
cannot keep up loses the oldest samples, and is told how many (``dropped``), so the
sampler and the other browsers never wait for it. Project data reaches only members: a
GPU held by another project's job is shown as busy, without its job or processes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer
from django.conf import settings

from controlplane.tenancy.sockets import AccessWatch
from monitoring import frames, queries

SCHEMA_VERSION = 1


class PingConsumer(AccessWatch, AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        await self.accept()
        await self.watch_access()

    async def disconnect(self, code: int) -> None:
        await self.stop_watching()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict) or content.get("type") != "ping":
            await self.send_json(
                {"type": "error", "v": SCHEMA_VERSION, "detail": 'Send {"type": "ping"}.'}
            )
            return
        await self.channel_layer.send(
            self.channel_name,
            {"type": "pong.relay", "id": content.get("id"), "sent": time.time()},
        )

    async def pong_relay(self, event: dict) -> None:
        await self.send_json(
            {
                "type": "pong",
                "v": SCHEMA_VERSION,
                "id": event.get("id"),
                "user": self.scope["user"].get_username(),
                "layer_ms": round((time.time() - event["sent"]) * 1000, 3),
            }
        )

    async def decode_json(self, text_data: str) -> Any:
        try:
            return await super().decode_json(text_data)
        except ValueError:
            return None


class OutBuffer:
    """A bounded queue of outgoing texts: full, it drops the oldest and counts them; the
    next text out is preceded by a ``dropped`` notice saying how many were lost."""

    def __init__(self, size: int) -> None:
        self.items: deque[str] = deque(maxlen=size)
        self.first: str | None = None  # the snapshot: sent before anything, never dropped
        self.dropped = 0
        self.total_dropped = 0
        self.ready = asyncio.Event()

    def push_first(self, text: str) -> None:
        self.first = text
        self.ready.set()

    def push(self, text: str) -> None:
        if len(self.items) == self.items.maxlen:
            self.dropped += 1
            self.total_dropped += 1
        self.items.append(text)
        self.ready.set()

    async def pump(self, send: Callable[[str], Awaitable[None]]) -> None:
        """Send what is queued, forever (cancel it to stop)."""
        while True:
            await self.ready.wait()
            self.ready.clear()
            if self.first is not None:
                first, self.first = self.first, None
                await send(first)
            while self.items:
                if self.dropped:
                    notice = {
                        "type": "dropped",
                        "v": SCHEMA_VERSION,
                        "count": self.dropped,
                        "total": self.total_dropped,
                        "detail": "This connection fell behind; older samples were skipped.",
                    }
                    self.dropped = 0
                    await send(json.dumps(notice))
                await send(self.items.popleft())


class _RedactionCache:
    """One redacted text per (host, sample, projects seen): many viewers, one encoding."""

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self.texts: OrderedDict[tuple, str] = OrderedDict()

    def get(self, message: dict, visible: set[int]) -> str:
        shown = frozenset(p for p in message["projects"] if p in visible)
        key = (message.get("host"), message.get("seq"), message["text"][:64], shown)
        text = self.texts.get(key)
        if text is None:
            text = json.dumps(frames.redact(json.loads(message["text"]), set(shown)))
            self.texts[key] = text
            if len(self.texts) > self.size:
                self.texts.popitem(last=False)
        return text


_redactions = _RedactionCache()


class TelemetryConsumer(AccessWatch, AsyncWebsocketConsumer):
    """Base: authenticate, join ``groups()``, snapshot first, then buffered samples."""

    channel_layer_alias = "telemetry"

    async def connect(self) -> None:
        self.groups_joined: list[str] = []
        self.pump_task: asyncio.Task | None = None
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.visible = await database_sync_to_async(queries.visible_projects)(user)
        if not await database_sync_to_async(self.allowed)(user):
            await self.close(code=4404)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode())
        try:
            self.since: float | None = float(query["since"][0]) if "since" in query else None
        except ValueError:
            self.since = None
        self.buffer = OutBuffer(settings.TELEMETRY_WS_BUFFER)
        for name in self.groups_to_join():
            await self.channel_layer.group_add(name, self.channel_name)
            self.groups_joined.append(name)
        await self.accept()
        await self.watch_access()
        # Everything goes out through the buffer's task: this consumer's loop never waits on
        # a slow socket, so it keeps draining the channel layer (and dropping the oldest).
        snapshot = await database_sync_to_async(self.snapshot)()
        self.buffer.push_first(json.dumps(snapshot))
        self.pump_task = asyncio.create_task(self.buffer.pump(self._send_text))

    async def _send_text(self, text: str) -> None:
        await self.send(text_data=text)

    def allowed_now(self, user: Any) -> bool:
        self.visible = queries.visible_projects(user)
        return self.allowed(user)

    async def disconnect(self, code: int) -> None:
        await self.stop_watching()
        if getattr(self, "pump_task", None) is not None:
            self.pump_task.cancel()
        for name in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(name, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        self.buffer.push(
            json.dumps(
                {
                    "type": "error",
                    "v": SCHEMA_VERSION,
                    "detail": "This socket only sends; reconnect with ?since=<t> to resume.",
                }
            )
        )

    async def telemetry_sample(self, message: dict) -> None:
        if self.visible is None or set(message["projects"]) <= self.visible:
            self.buffer.push(message["text"])
        else:
            self.buffer.push(_redactions.get(message, self.visible))

    # --- what subclasses say -------------------------------------------------------------

    def allowed(self, user: Any) -> bool:
        return True

    def groups_to_join(self) -> list[str]:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        raise NotImplementedError


class ClusterTelemetryConsumer(TelemetryConsumer):
    """``/ws/telemetry/``: every host's samples."""

    def groups_to_join(self) -> list[str]:
        return [frames.CLUSTER_GROUP]

    def snapshot(self) -> dict[str, Any]:
        return queries.cluster_snapshot(self.visible, self.since)


class HostTelemetryConsumer(TelemetryConsumer):
    """``/ws/telemetry/hosts/<id>/``: one host, with its recent window."""

    def allowed(self, user: Any) -> bool:
        self.worker_id = int(self.scope["url_route"]["kwargs"]["worker_id"])
        return queries.worker_exists(self.worker_id)

    def groups_to_join(self) -> list[str]:
        return [frames.host_group(self.worker_id)]

    def snapshot(self) -> dict[str, Any]:
        return queries.host_snapshot(self.worker_id, self.visible, self.since)


class JobTelemetryConsumer(TelemetryConsumer):
    """``/ws/telemetry/jobs/<id>/``: a job's GPUs and processes on every host, and its
    energy; members of its project only (others are refused as if it did not exist).
    A deployment's socket will be the same with ``kind = "deployment"``."""

    kind = "job"

    def allowed(self, user: Any) -> bool:
        self.holder_id = int(self.scope["url_route"]["kwargs"]["holder_id"])
        return queries.holder_visible(self.kind, self.holder_id, user)

    def groups_to_join(self) -> list[str]:
        return [frames.group(self.kind, self.holder_id)]

    def snapshot(self) -> dict[str, Any]:
        return queries.holder_snapshot(self.kind, self.holder_id)
