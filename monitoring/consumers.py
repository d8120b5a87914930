"""Websocket consumers of the monitoring app.

``PingConsumer`` (``/ws/ping/``) proves the whole path: the socket, authentication, and a
message that leaves through the channel layer (Redis) and comes back before the reply.
"""

from __future__ import annotations

import time
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

SCHEMA_VERSION = 1


class PingConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        await self.accept()

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
