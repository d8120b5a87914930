"""Read side of telemetry: who may see what, the snapshots a websocket starts with, the
history series the API serves, and a job's usage and energy. Nothing here writes.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import F, FloatField, Func, Model, Q, Sum, Value
from django.db.models.functions import Floor

from controlplane.cluster.models import Gpu, Worker
from controlplane.tenancy.api.base import scope_to_user
from controlplane.tenancy.models import Membership
from jobs.models import Job
from monitoring import frames, store
from monitoring.models import GpuHistory, HostHistory, JobUsage
from monitoring.services import epoch

CLUSTER_RECENT_SECONDS = 120
SERIES_GPU = ("util_mean", "util_max", "mem_util_mean", "mem_used_mean", "mem_used_max",
              "power_mean", "power_max", "temp_mean", "temp_max", "sm_clock_mean",
              "mem_clock_mean", "energy_j")  # fmt: skip
SERIES_HOST = ("cpu_mean", "cpu_max", "mem_used_mean", "mem_used_max", "load1_mean",
               "net_rx_mean", "net_tx_mean", "disk_read_mean", "disk_write_mean")  # fmt: skip
_MAX_FIELDS = {"util_max", "mem_used_max", "power_max", "temp_max", "cpu_max"}


def visible_projects(user: Any) -> set[int] | None:
    """The project ids ``user`` is a member of; None for superusers (all)."""
    if user.is_superuser:
        return None
    return set(Membership.objects.filter(user=user).values_list("project_id", flat=True))


def worker_exists(worker_id: int) -> bool:
    return Worker.objects.filter(pk=worker_id).exists()


def holder_visible(kind: str, holder_id: int, user: Any) -> bool:
    if kind != "job":
        return False
    return scope_to_user(Job.objects.filter(pk=holder_id), user, "project").exists()


def online_workers() -> list[tuple[int, str]]:
    return list(Worker.objects.online().values_list("pk", "name"))


def latest_frames(worker_ids: list[int], visible: set[int] | None) -> list[dict[str, Any]]:
    found = store.latest(worker_ids)
    return [frames.redact(found[i], visible) for i in worker_ids if i in found]


def _snapshot(scope: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "snapshot",
        "v": frames.SCHEMA_VERSION,
        "scope": scope,
        "t": round(time.time(), 3),
        "interval": settings.TELEMETRY_INTERVAL,
        "buffer": settings.TELEMETRY_WS_BUFFER,
        **fields,
    }


def _host_summary(entry: dict[str, Any]) -> dict[str, Any]:
    """A recent-window entry reduced to host figures (for the cluster chart)."""
    utils = [g[0] for g in entry["gpus"] if g[0] is not None]
    powers = [g[2] for g in entry["gpus"] if g[2] is not None]
    return {
        "t": entry["t"],
        "cpu": entry["cpu"],
        "gpu_util": round(sum(utils) / len(utils), 1) if utils else None,
        "power_w": round(sum(powers), 1) if powers else None,
    }


def cluster_snapshot(visible: set[int] | None, since: float | None = None) -> dict[str, Any]:
    workers = online_workers()
    ids = [pk for pk, _ in workers]
    floor = time.time() - CLUSTER_RECENT_SECONDS
    since = floor if since is None else max(since, floor)
    recent = {
        pk: [_host_summary(e) for e in store.recent(pk, since=since, limit=CLUSTER_RECENT_SECONDS)]
        for pk in ids
    }
    return _snapshot(
        "cluster",
        hosts=latest_frames(ids, visible),
        recent=recent,
        workers=[{"id": pk, "name": name} for pk, name in workers],
    )


def host_snapshot(worker_id: int, visible: set[int] | None, since: float | None) -> dict[str, Any]:
    worker = Worker.objects.get(pk=worker_id)
    return _snapshot(
        "host",
        host={"id": worker.pk, "name": worker.name, "online": worker.is_online},
        hosts=latest_frames([worker_id], visible),
        recent={worker_id: store.recent(worker_id, since=since)},
        fields=list(frames.COMPACT_GPU_FIELDS),
    )


def holder_hosts(kind: str, holder_id: int) -> list[int]:
    """Hosts whose latest sample shows this holder (where it runs now)."""
    if kind != "job":
        return []
    from jobs.models import AttemptNode, NodeState

    return list(
        AttemptNode.objects.filter(attempt__job_id=holder_id, state=NodeState.RUNNING)
        .exclude(worker=None)
        .values_list("worker_id", flat=True)
        .distinct()
    )


def holder_snapshot(kind: str, holder_id: int) -> dict[str, Any]:
    found = store.latest(holder_hosts(kind, holder_id))
    samples = [s for s in (frames.narrow(f, kind, holder_id) for f in found.values()) if s]
    return _snapshot(kind, kind=kind, id=holder_id, samples=samples, usage=job_usage(holder_id))


def job_usage(job_id: int) -> dict[str, Any]:
    """A job's energy and GPU usage, per host and in total (kept after it ends)."""
    rows = list(JobUsage.objects.filter(job_id=job_id))
    hosts = [
        {
            "worker": r.worker_name,
            "joules": round(r.joules, 3),
            "kwh": r.kwh,
            "energy_source": r.energy_source,
            "gpu_seconds": round(r.gpu_seconds, 3),
            "util_mean": None if r.util_mean is None else round(r.util_mean, 2),
            "mem_peak": r.mem_peak,
            "power_peak": round(r.power_peak, 2),
            "cpu_seconds": round(r.cpu_seconds, 3),
            "rss_peak": r.rss_peak,
            "first_seen": r.first_seen.isoformat(),
            "last_seen": r.last_seen.isoformat(),
        }
        for r in rows
    ]
    joules = sum(r.joules for r in rows)
    gpu_seconds = sum(r.gpu_seconds for r in rows)
    return {
        "joules": round(joules, 3),
        "kwh": joules / 3.6e6,
        "gpu_seconds": round(gpu_seconds, 3),
        "util_mean": round(sum(r.util_seconds for r in rows) / gpu_seconds, 2)
        if gpu_seconds
        else None,
        "hosts": hosts,
    }


def _bucketed(
    rows: list[dict[str, Any]], names: tuple[str, ...], start: float, step: int
) -> list[dict[str, Any]]:
    """Rows re-bucketed to ``step`` seconds: means weighted by samples, maxes of maxes,
    energy summed; the job label of the last row of each bucket."""
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[int((epoch(row["t"]) - start) // step)].append(row)
    points = []
    for slot in sorted(groups):
        chunk = groups[slot]
        point: dict[str, Any] = {"t": start + slot * step, "n": sum(r["n"] for r in chunk)}
        for name in names:
            values = [(r[name], r["n"] or 1) for r in chunk if r.get(name) is not None]
            if not values:
                point[name] = None
            elif name == "energy_j":
                point[name] = round(sum(v for v, _ in values), 3)
            elif name in _MAX_FIELDS:
                point[name] = max(v for v, _ in values)
            else:
                weight = sum(w for _, w in values)
                point[name] = round(sum(v * w for v, w in values) / weight, 3)
        if "job_id" in chunk[-1]:
            point["job"] = chunk[-1]["job_id"]
            point["project"] = chunk[-1]["project_id"]
        points.append(point)
    return points


def gpu_series(
    gpu: Gpu, start: datetime, end: datetime, step: int, visible: set[int] | None
) -> list[dict[str, Any]]:
    rows = list(
        GpuHistory.objects.filter(uuid=gpu.uuid, t__gte=start, t__lt=end)
        .order_by("t", "step")
        .values("t", "n", "job_id", "project_id", *SERIES_GPU)
    )
    points = _bucketed(rows, SERIES_GPU, epoch(start), step)
    for point in points:
        if (
            point.get("project") is not None
            and visible is not None
            and point["project"] not in visible
        ):
            point["job"], point["project"], point["hidden"] = None, None, True
    return points


def host_series(worker: Worker, start: datetime, end: datetime, step: int) -> list[dict[str, Any]]:
    rows = list(
        HostHistory.objects.filter(worker=worker, t__gte=start, t__lt=end)
        .order_by("t", "step")
        .values("t", "n", *SERIES_HOST)
    )
    return _bucketed(rows, SERIES_HOST, epoch(start), step)


def object_or_none(model: type[Model], pk: int) -> Any:
    return model.objects.filter(pk=pk).first()


class _Epoch(Func):
    """A time as Unix seconds, computed by the database."""

    template = "EXTRACT(EPOCH FROM %(expressions)s)"
    output_field = FloatField()

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> tuple[str, list]:
        # '%s' is a parameter to the driver: the format's '%' reaches SQLite doubled twice.
        template = "CAST(STRFTIME('%%%%s', %(expressions)s) AS REAL)"
        return super().as_sql(compiler, connection, template=template, **extra)


def _weighted_series(
    rows: Any, field: str, step: int, keys: tuple[str, ...]
) -> dict[tuple, list[list[float | None]]]:
    """Per ``keys``: [[t, mean of ``field`` weighted by samples], ...] over ``step``-second
    buckets, bucketed and averaged in the database (one row per key and point)."""
    weight = Sum("n", filter=Q(**{f"{field}__isnull": False}))
    grouped = (
        rows.annotate(bucket=Floor(_Epoch("t") / Value(float(step))))
        .values(*keys, "bucket")
        .annotate(total=Sum(F(field) * F("n"), output_field=FloatField()), weight=weight)
        .order_by(*keys, "bucket")
    )
    series: dict[tuple, list[list[float | None]]] = defaultdict(list)
    for row in grouped:
        mean = round(row["total"] / row["weight"], 3) if row["weight"] else None
        series[tuple(row[k] for k in keys)].append([int(row["bucket"]) * step, mean])
    return series


def cluster_series(start: datetime, end: datetime, step: int) -> list[dict[str, Any]]:
    """Each host's mean GPU utilization over the range (its CPU where it has no GPU)."""
    gpu = _weighted_series(
        GpuHistory.objects.filter(t__gte=start, t__lt=end), "util_mean", step, ("worker_id",)
    )
    cpu = _weighted_series(
        HostHistory.objects.filter(t__gte=start, t__lt=end), "cpu_mean", step, ("worker_id",)
    )
    ids = {key[0] for key in gpu} | {key[0] for key in cpu}
    names = dict(Worker.objects.filter(pk__in=ids).values_list("pk", "name"))
    hosts = []
    for worker_id in sorted(i for i in ids if i in names):
        kind, points = (
            ("GPU", gpu[(worker_id,)]) if (worker_id,) in gpu else ("CPU", cpu[(worker_id,)])
        )
        hosts.append({"id": worker_id, "name": names[worker_id], "kind": kind, "points": points})
    return hosts


def job_series(job_id: int, start: datetime, end: datetime, step: int) -> list[dict[str, Any]]:
    """The utilization and power of each GPU while ``job_id`` held it, over the range."""
    rows = GpuHistory.objects.filter(job_id=job_id, t__gte=start, t__lt=end)
    keys = ("worker__name", "index")
    util = _weighted_series(rows, "util_mean", step, keys)
    power = _weighted_series(rows, "power_mean", step, keys)
    return [
        {"host": host, "index": index, "util": util[(host, index)], "power": power[(host, index)]}
        for host, index in sorted(util, key=lambda k: (k[0] or "", k[1]))
    ]
