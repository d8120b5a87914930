"""Read-side helpers of the jobs app: metric series downsampled for charts (in the
database, so a job with millions of points answers as fast as one with thousands), and
the scalars a job page shows as a table rather than as one-point charts."""

from __future__ import annotations

from collections import defaultdict

from django.db.models import Avg, Count, F, IntegerField, Max, Min
from django.db.models.functions import Cast

from jobs.models import Job, Metric

#: Metrics under this prefix describe the run (devices, parameters, world size), not a
#: curve: shown as values, never as charts.
SCALAR_PREFIXES = ("system/", "params/", "config/")


def metric_names(job: Job) -> list[str]:
    return sorted(set(Metric.objects.filter(job=job).values_list("name", flat=True)))


def _is_scalar(name: str, count: int) -> bool:
    return count == 1 or name.startswith(SCALAR_PREFIXES)


def metric_counts(job: Job) -> dict[str, int]:
    rows = Metric.objects.filter(job=job).values("name").annotate(n=Count("id"))
    return {row["name"]: row["n"] for row in rows.order_by()}


def series_names(job: Job) -> list[str]:
    """The metrics worth a chart: more than one point, and not a run's description."""
    return sorted(n for n, count in metric_counts(job).items() if not _is_scalar(n, count))


def scalars(job: Job) -> dict[str, float]:
    """Every metric's latest value (for series: the final one), by name."""
    out = {}
    for name in sorted(metric_counts(job)):
        row = (
            Metric.objects.filter(job=job, name=name)
            .order_by("-step", "-id")
            .values_list("value", flat=True)
            .first()
        )
        if row is not None:
            out[name] = row
    return out


def metric_series(
    job: Job,
    names: list[str] | None = None,
    max_points: int = 1000,
    since_id: int = 0,
    with_time: bool = False,
) -> dict[str, list[list[float]]]:
    """``{name: [[step, value], ...]}`` (``[step, value, unix_time]`` with ``with_time``).
    A series longer than ``max_points`` is averaged over equal ranges of steps, in the
    database; each bucket is drawn at its last step."""
    rows = Metric.objects.filter(job=job, pk__gt=since_id)
    if names:
        rows = rows.filter(name__in=names)
    if since_id:  # a reconnect's catch-up: few points, returned as they are
        return _points(rows, with_time)
    stats = rows.values("name").annotate(n=Count("id"), lo=Min("step"), hi=Max("step")).order_by()
    small = [s["name"] for s in stats if s["n"] <= max_points]
    series = _points(rows.filter(name__in=small), with_time) if small else {}
    for s in stats:
        if s["n"] <= max_points:
            continue
        span = s["hi"] - s["lo"] + 1
        buckets = (
            rows.filter(name=s["name"])
            .annotate(bucket=Cast((F("step") - s["lo"]) * max_points / span, IntegerField()))
            .values("bucket")
            .annotate(step=Max("step"), value=Avg("value"), time=Max("created_at"))
            .order_by("bucket")
        )
        series[s["name"]] = [
            [b["step"], b["value"], b["time"].timestamp()] if with_time else [b["step"], b["value"]]
            for b in buckets
        ]
    return series


def _points(rows, with_time: bool) -> dict[str, list[list[float]]]:
    points: dict[str, list[list[float]]] = defaultdict(list)
    fields = ("name", "step", "value", "created_at")
    for name, step, value, at in rows.order_by("name", "step", "id").values_list(*fields):
        points[name].append([step, value, at.timestamp()] if with_time else [step, value])
    return dict(points)
