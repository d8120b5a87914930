"""Telemetry REST API (read-only), under /api/v1/:

- ``gpus/{id}/telemetry/?from=&to=&step=``: a GPU's history (mean and max per step);
- ``workers/{id}/telemetry/?from=&to=&step=``: a host's history;
- ``jobs/{id}/telemetry/``: a job's energy and GPU usage (per host and total, kept after
  it ends) and its GPUs' current readings -- members of its project only; with a range
  (``from``/``to``/``step``), also each of its GPUs' utilization and power over it;
- ``telemetry/``: the latest sample of every online host;
- ``telemetry/history/?from=&to=&step=``: each host's mean GPU utilization (CPU where it
  has no GPU) over a range: the cluster page's chart.

``from``/``to`` are ISO 8601 times or Unix seconds (default: the last hour); ``step`` is
seconds per point (default: what gives at most ~720 points). Hosts and GPUs are shared
inventory, but which job held a GPU is project data: it is shown only to members.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.shortcuts import get_object_or_404
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.cluster.models import Gpu, Worker
from controlplane.tenancy.api.base import scope_to_user
from controlplane.tenancy.api.common import StrictSerializer
from jobs.models import Job
from monitoring import frames, queries

MAX_POINTS = 5000
DEFAULT_POINTS = 720


def _moment(value: str, name: str) -> datetime:
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = parse_datetime(value)
        except ValueError:  # well formed, but no such date (a 13th month, ...)
            parsed = None
        if parsed is None:
            raise serializers.ValidationError(
                {name: [f"{value!r} is not a time: use ISO 8601 or Unix seconds."]}
            ) from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if not math.isfinite(seconds) or not 0 <= seconds < 1e11:
        raise serializers.ValidationError({name: [f"{value!r} is out of range."]})
    return datetime.fromtimestamp(seconds, tz=UTC)


class RangeQuery(StrictSerializer):
    # "from" is a keyword in Python: declared below.
    to = serializers.CharField(required=False, help_text="End (ISO 8601 or Unix seconds).")
    step = serializers.IntegerField(
        required=False, min_value=1, max_value=86400, help_text="Seconds per point."
    )

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        fields["from"] = serializers.CharField(
            required=False, help_text="Start (ISO 8601 or Unix seconds); default: 1 h ago."
        )
        return fields

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        end = _moment(attrs["to"], "to") if "to" in attrs else timezone.now()
        start = _moment(attrs["from"], "from") if "from" in attrs else end - timedelta(hours=1)
        if start >= end:
            raise serializers.ValidationError({"from": ["'from' must be before 'to'."]})
        span = (end - start).total_seconds()
        base = settings.TELEMETRY_HISTORY_STEP
        step = attrs.get("step") or max(base, math.ceil(span / DEFAULT_POINTS / base) * base)
        if span / step > MAX_POINTS:
            raise serializers.ValidationError(
                {"step": [f"{span:.0f} s at {step} s a point is over {MAX_POINTS} points."]}
            )
        return {"start": start, "end": end, "step": step}


#: A moment: an ISO 8601 time, or Unix seconds; empty (as absent) for the default.
MOMENT_SCHEMA = {
    "anyOf": [
        {"type": "string", "format": "date-time"},
        {"type": "string", "maxLength": 0},
        {"type": "string", "pattern": r"^[0-9]{1,10}(\.[0-9]{1,6})?$"},
    ]
}
RANGE_PARAMETERS = [
    OpenApiParameter(
        "from", MOMENT_SCHEMA, description="Start: ISO 8601 or Unix seconds; before `to`."
    ),
    OpenApiParameter("to", MOMENT_SCHEMA, description="End: ISO 8601 or Unix seconds."),
    OpenApiParameter(
        "step",
        {"type": "integer", "minimum": 1, "maximum": 86400},
        description=f"Seconds per point (at most {MAX_POINTS} points in the range).",
    ),
]


def _range(request: Request) -> dict[str, Any]:
    query = RangeQuery(data=request.query_params)
    query.is_valid(raise_exception=True)
    return query.validated_data


def _envelope(r: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "from": r["start"].isoformat(),
        "to": r["end"].isoformat(),
        "step": r["step"],
        **fields,
    }


class GpuTelemetryView(APIView):
    """A GPU's history: per point, mean and max utilization, memory, power, temperature,
    clocks, the energy used, and the job that held it (for your projects)."""

    @extend_schema(parameters=RANGE_PARAMETERS, responses=OpenApiTypes.OBJECT)
    def get(self, request: Request, gpu_id: int) -> Response:
        gpu = get_object_or_404(Gpu.objects.select_related("worker"), pk=gpu_id)
        r = _range(request)
        visible = queries.visible_projects(request.user)
        points = queries.gpu_series(gpu, r["start"], r["end"], r["step"], visible)
        gpu_info = {
            "id": gpu.pk,
            "uuid": gpu.uuid,
            "index": gpu.index,
            "name": gpu.name,
            "worker": gpu.worker.name,
            "worker_id": gpu.worker_id,
        }
        return Response(_envelope(r, gpu=gpu_info, points=points))


class WorkerTelemetryView(APIView):
    """A host's history: CPU, memory, load, network and disk throughput."""

    @extend_schema(parameters=RANGE_PARAMETERS, responses=OpenApiTypes.OBJECT)
    def get(self, request: Request, worker_id: int) -> Response:
        worker = get_object_or_404(Worker, pk=worker_id)
        r = _range(request)
        points = queries.host_series(worker, r["start"], r["end"], r["step"])
        return Response(_envelope(r, worker={"id": worker.pk, "name": worker.name}, points=points))


class JobTelemetryView(APIView):
    """A job's energy (J and kWh) and GPU usage, per host and in total, and the current
    readings of the GPUs it holds."""

    @extend_schema(parameters=RANGE_PARAMETERS, responses=OpenApiTypes.OBJECT)
    def get(self, request: Request, job_id: int) -> Response:
        job = get_object_or_404(
            scope_to_user(Job.objects.all(), request.user, "project"), pk=job_id
        )
        snapshot = queries.holder_snapshot("job", job.pk)
        body = {
            "job": job.pk,
            "state": job.state,
            "usage": snapshot["usage"],
            "samples": snapshot["samples"],
        }
        if {"from", "to", "step"} & set(request.query_params):
            r = _range(request)
            history = queries.job_series(job.pk, r["start"], r["end"], r["step"])
            body["history"] = _envelope(r, gpus=history)
        return Response(body)


class ClusterTelemetryView(APIView):
    """Each host's mean GPU utilization over a range, or its CPU where it has no GPU:
    ``{"hosts": [{"id", "name", "kind": "GPU"|"CPU", "points": [[t, percent], ...]}]}``."""

    @extend_schema(parameters=RANGE_PARAMETERS, responses=OpenApiTypes.OBJECT)
    def get(self, request: Request) -> Response:
        r = _range(request)
        return Response(_envelope(r, hosts=queries.cluster_series(r["start"], r["end"], r["step"])))


class LatestTelemetryView(APIView):
    """The latest sample of every online host (GPUs of other projects' jobs show busy)."""

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request: Request) -> Response:
        visible = queries.visible_projects(request.user)
        ids = [pk for pk, _ in queries.online_workers()]
        return Response(
            {
                "v": frames.SCHEMA_VERSION,
                "interval": settings.TELEMETRY_INTERVAL,
                "hosts": queries.latest_frames(ids, visible),
            }
        )
