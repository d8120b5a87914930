"""Read-side helpers of the jobs app: metric series downsampled for charts (in the
database, so a job with millions of points answers as fast as one with thousands), and
the scalars a job page shows as a table rather than as one-point charts."""

from __future__ import annotations

from collections import defaultdict

from django.db.models import Avg, F, IntegerField, Max
from django.db.models.functions import Cast

from jobs import rollups
from jobs.models import Job, Metric

#: Metrics under this prefix describe the run (devices, parameters, world size), not a
#: curve: shown as values, never as charts.
SCALAR_PREFIXES = ("system/", "params/", "config/")


def metric_names(job: Job) -> list[str]:
    return sorted(rollups.summaries(job.pk))


def last_metric_id(job: Job) -> int:
    """The id of the job's newest metric point (0 for none): a live page's cursor."""
    return max((r.last_id for r in rollups.summaries(job.pk).values()), default=0)


def _is_scalar(name: str, count: int) -> bool:
    return count == 1 or name.startswith(SCALAR_PREFIXES)


def metric_counts(job: Job) -> dict[str, int]:
    return {name: r.n for name, r in rollups.summaries(job.pk).items()}


def series_names(job: Job) -> list[str]:
    """The metrics worth a chart: more than one point, and not a run's description."""
    return sorted(n for n, count in metric_counts(job).items() if not _is_scalar(n, count))


def scalars(job: Job) -> dict[str, float]:
    """Every metric's latest value (for series: the one at the last step), by name."""
    return {name: r.last_value for name, r in sorted(rollups.summaries(job.pk).items())}


#: A series up to this many times ``max_points`` long (or up to ``EXACT_POINTS``) is
#: averaged from its points over exactly ``max_points`` equal ranges; a longer one is
#: drawn from its rollups.
EXACT_UP_TO, EXACT_POINTS = 4, 4096


def metric_series(
    job: Job,
    names: list[str] | None = None,
    max_points: int = 1000,
    since_id: int = 0,
    with_time: bool = False,
) -> dict[str, list[list[float]]]:
    """``{name: [[step, value], ...]}`` (``[step, value, unix_time]`` with ``with_time``).
    A series longer than ``max_points`` is averaged over ranges of steps, each drawn at
    its last step: over ``max_points`` equal ranges in the database when it is at most
    ``EXACT_UP_TO`` times longer (or short), else from its rollups (aligned ranges, between a
    quarter of ``max_points`` and ``max_points`` of them), so a series of millions of
    points answers as fast as one of thousands."""
    rows = Metric.objects.filter(job=job, pk__gt=since_id)
    if names:
        rows = rows.filter(name__in=names)
    if since_id:  # a reconnect's catch-up: few points, returned as they are
        return _points(rows, with_time)
    stats = {name: r for name, r in rollups.summaries(job.pk).items() if not names or name in names}
    small = [name for name, r in stats.items() if r.n <= max_points]
    series = _points(rows.filter(name__in=small), with_time) if small else {}
    for name, r in stats.items():
        if r.n <= max_points:
            continue
        span = r.last_step - r.first_step + 1
        if r.n <= max(EXACT_UP_TO * max_points, EXACT_POINTS):
            series[name] = _equal_ranges(rows.filter(name=name), r.first_step, span,
                                         max_points, with_time)  # fmt: skip
        else:
            width = rollups.width_for(span, max_points)
            series[name] = rollups.buckets(job.pk, name, width, max_points, with_time)
    return dict(sorted(series.items()))


def _equal_ranges(rows, lo: int, span: int, max_points: int, with_time: bool) -> list:
    buckets = (
        rows.annotate(bucket=Cast((F("step") - lo) * max_points / span, IntegerField()))
        .values("bucket")
        .annotate(step=Max("step"), value=Avg("value"), time=Max("created_at"))
        .order_by("bucket")
    )
    return [
        [b["step"], b["value"], b["time"].timestamp()] if with_time else [b["step"], b["value"]]
        for b in buckets
    ]


def _points(rows, with_time: bool) -> dict[str, list[list[float]]]:
    points: dict[str, list[list[float]]] = defaultdict(list)
    fields = ("name", "step", "value", "created_at")
    for name, step, value, at in rows.order_by("name", "step", "id").values_list(*fields):
        points[name].append([step, value, at.timestamp()] if with_time else [step, value])
    return dict(points)
