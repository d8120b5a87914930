"""A project's usage over a time range: GPU-hours and CPU-hours its jobs held (from their
start and end, clipped to the range, per day), the energy its GPUs' counters measured
for them, and its jobs by state. Read by the project page; spans jobs and monitoring,
so it lives above both."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Q, Sum
from django.utils import timezone

from controlplane.tenancy.models import Project
from jobs.models import Job
from monitoring.models import JobUsage

MAX_DAYS = 366


def _overlap(start: datetime, end: datetime, lo: datetime, hi: datetime) -> float:
    return max(0.0, (min(end, hi) - max(start, lo)).total_seconds())


def project_usage(project: Project, days: int, now: datetime | None = None) -> dict[str, Any]:
    """Usage in the last ``days`` days (1 to 366), in total and per UTC day."""
    days = max(1, min(MAX_DAYS, days))
    now = now or timezone.now()
    first_day = (now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    edges = [first_day + timedelta(days=i) for i in range(days + 1)]
    edges[-1] = min(edges[-1], now)
    held = (
        Job.objects.filter(project=project, started_at__isnull=False, started_at__lt=now)
        .filter(Q(finished_at__isnull=True) | Q(finished_at__gt=first_day))
        .values_list("started_at", "finished_at", "nodes", "gpus_per_node", "procs_per_node")
    )
    gpu = [0.0] * days
    cpu = [0.0] * days
    for started, finished, nodes, gpus, procs in held:
        end = finished or now
        for i in range(days):
            seconds = _overlap(started, end, edges[i], edges[i + 1])
            if not seconds:
                continue
            if gpus:
                gpu[i] += seconds * nodes * gpus / 3600
            else:
                cpu[i] += seconds * nodes * procs / 3600
    energy = JobUsage.objects.filter(
        job__project=project, last_seen__gte=first_day, first_seen__lte=now
    ).aggregate(j=Sum("joules"))["j"]
    by_state = dict(
        Job.objects.filter(project=project, created_at__gte=first_day)
        .values_list("state")
        .annotate(n=Count("id"))
        .order_by()
    )
    return {
        "days": days,
        "since": first_day,
        "gpu_hours": round(sum(gpu), 3),
        "cpu_hours": round(sum(cpu), 3),
        "energy_kwh": round((energy or 0.0) / 3.6e6, 6),
        "jobs_by_state": by_state,
        "daily": [
            {
                "day": edges[i].date().isoformat(),
                "gpu_hours": round(gpu[i], 3),
                "cpu_hours": round(cpu[i], 3),
            }
            for i in range(days)
        ],
    }
