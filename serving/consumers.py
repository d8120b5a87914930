"""``/ws/deployments/<id>/``: a deployment's state, replicas, events and live figures.

On connect a member gets a snapshot (the deployment as the REST API shows it, its
replicas, its last events and its live figures); then every controller pass that changes
something or scrapes new figures arrives as a ``deployment.event``. Anyone else is
refused as if it did not exist.
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from controlplane.tenancy.api.base import scope_to_user
from controlplane.tenancy.sockets import AccessWatch
from serving.deployments import stats
from serving.models import Deployment


class DeploymentConsumer(AccessWatch, AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.deployment_id = int(self.scope["url_route"]["kwargs"]["deployment_id"])
        if not await self._visible(user):
            await self.close(code=4404)
            return
        await self.channel_layer.group_add(stats.group(self.deployment_id), self.channel_name)
        await self.accept()
        await self.watch_access()
        await self.send_json(await self._snapshot())

    def allowed_now(self, user: Any) -> bool:
        rows = Deployment.objects.filter(pk=self.deployment_id).exclude(state="DELETED")
        return scope_to_user(rows, user, "project").exists()

    async def disconnect(self, code: int) -> None:
        await self.stop_watching()
        if hasattr(self, "deployment_id"):
            await self.channel_layer.group_discard(
                stats.group(self.deployment_id), self.channel_name
            )

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        await self.send_json(
            {"type": "error", "v": stats.SCHEMA_VERSION, "detail": "This socket only sends."}
        )

    async def decode_json(self, text_data: str) -> Any:
        try:
            return await super().decode_json(text_data)
        except ValueError:
            return None

    async def deployment_event(self, message: dict) -> None:
        await self.send_json(message["event"])

    @database_sync_to_async
    def _visible(self, user: Any) -> bool:
        rows = Deployment.objects.filter(pk=self.deployment_id).exclude(state="DELETED")
        return scope_to_user(rows, user, "project").exists()

    @database_sync_to_async
    def _snapshot(self) -> dict:
        from serving.deployments.api import snapshot

        return {"type": "snapshot", "v": stats.SCHEMA_VERSION, **snapshot(self.deployment_id)}
