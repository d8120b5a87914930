"""``/ws/jobs/<id>/``: a job's state, log output and metrics, live.

On connect the client gets a snapshot (state, the log tail, the metric series, and the
last ids of each), then every event as it happens. A client that reconnects sends
``{"type": "resume", "log_since": <id>, "metric_since": <id>}`` and gets what it missed.
Only members of the job's project may watch it (others are refused as if it did not
exist).
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from controlplane.tenancy.api.base import scope_to_user
from controlplane.tenancy.models import Project
from controlplane.tenancy.sockets import AccessWatch
from jobs import events, queries
from jobs.api.serializers import LogChunkSerializer
from jobs.models import Job, LogChunk

SNAPSHOT_LOG_CHUNKS = 200
#: Points per series in a page's first snapshot: a chart is some 600 pixels wide; W&B draws 500.
SNAPSHOT_POINTS = 1000
MAX_RESUME_CHUNKS = 1000


class JobConsumer(AccessWatch, AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.job_id = int(self.scope["url_route"]["kwargs"]["job_id"])
        if not await self._visible(user):
            await self.close(code=4404)
            return
        await self.channel_layer.group_add(events.group(self.job_id), self.channel_name)
        await self.accept()
        await self.watch_access()
        await self.send_json(await self._snapshot())

    def allowed_now(self, user: Any) -> bool:
        return scope_to_user(Job.objects.filter(pk=self.job_id), user, "project").exists()

    async def disconnect(self, code: int) -> None:
        await self.stop_watching()
        if hasattr(self, "job_id"):
            await self.channel_layer.group_discard(events.group(self.job_id), self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "resume":
            try:
                log_since = int(content.get("log_since") or 0)
                metric_since = int(content.get("metric_since") or 0)
            except (TypeError, ValueError):
                log_since = metric_since = -1
            if log_since >= 0 and metric_since >= 0:
                await self.send_json(await self._since(log_since, metric_since))
                return
        await self.send_json(
            {
                "type": "error",
                "v": events.SCHEMA_VERSION,
                "detail": 'Send {"type": "resume", "log_since": N, "metric_since": N}.',
            }
        )

    async def decode_json(self, text_data: str) -> Any:
        try:
            return await super().decode_json(text_data)
        except ValueError:
            return None

    async def job_event(self, message: dict) -> None:
        await self.send_json(message["event"])

    @database_sync_to_async
    def _visible(self, user: Any) -> bool:
        return scope_to_user(Job.objects.filter(pk=self.job_id), user, "project").exists()

    @database_sync_to_async
    def _snapshot(self) -> dict:
        job = Job.objects.get(pk=self.job_id)
        chunks = list(job.log_chunks.order_by("-id")[:SNAPSHOT_LOG_CHUNKS])[::-1]
        last_metric = queries.last_metric_id(job)
        return {
            "type": "snapshot",
            "v": events.SCHEMA_VERSION,
            "job": events.job_state(job),
            "progress": job.progress,
            "logs": LogChunkSerializer(chunks, many=True).data,
            "last_log": chunks[-1].pk if chunks else 0,
            "metrics": queries.metric_series(job, max_points=SNAPSHOT_POINTS, with_time=True),
            "last_metric": last_metric,
        }

    @database_sync_to_async
    def _since(self, log_since: int, metric_since: int) -> dict:
        job = Job.objects.get(pk=self.job_id)
        chunks = list(
            LogChunk.objects.filter(job=job, pk__gt=log_since).order_by("id")[:MAX_RESUME_CHUNKS]
        )
        last_metric = queries.last_metric_id(job)
        return {
            "type": "resumed",
            "v": events.SCHEMA_VERSION,
            "job": events.job_state(job),
            "logs": LogChunkSerializer(chunks, many=True).data,
            "last_log": chunks[-1].pk if chunks else log_since,
            "metrics": queries.metric_series(job, since_id=metric_since, with_time=True),
            "last_metric": max(last_metric, metric_since),
        }


class JobListConsumer(AccessWatch, AsyncJsonWebsocketConsumer):
    """``/ws/jobs/``: state changes and progress of every job in the caller's projects
    (what the jobs list needs to stay current). It sends only; a membership change closes
    it (``AccessWatch``) and the page reconnects with its new set of projects."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.project_ids = await self._projects(user)
        for project_id in self.project_ids:
            await self.channel_layer.group_add(events.project_group(project_id), self.channel_name)
        await self.accept()
        await self.watch_access()
        await self.send_json({"type": "hello", "v": events.SCHEMA_VERSION})

    async def disconnect(self, code: int) -> None:
        await self.stop_watching()
        for project_id in getattr(self, "project_ids", []):
            await self.channel_layer.group_discard(
                events.project_group(project_id), self.channel_name
            )

    def allowed_now(self, user: Any) -> bool:
        return set(self.project_ids) <= set(self._visible_projects(user))

    async def job_event(self, message: dict) -> None:
        await self.send_json(message["event"])

    @staticmethod
    def _visible_projects(user: Any) -> list[int]:
        return list(scope_to_user(Project.objects.all(), user, "").values_list("pk", flat=True))

    @database_sync_to_async
    def _projects(self, user: Any) -> list[int]:
        return self._visible_projects(user)
