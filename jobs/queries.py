"""Read-side helpers of the jobs app: metric series downsampled for charts."""

from __future__ import annotations

from collections import defaultdict

from jobs.models import Job, Metric


def metric_names(job: Job) -> list[str]:
    return sorted(set(Metric.objects.filter(job=job).values_list("name", flat=True)))


def metric_series(
    job: Job, names: list[str] | None = None, max_points: int = 1000, since_id: int = 0
) -> dict[str, list[list[float]]]:
    """``{name: [[step, value], ...]}``. A series longer than ``max_points`` is averaged
    over equal runs of consecutive points (the last step of each run is kept)."""
    rows = Metric.objects.filter(job=job, pk__gt=since_id)
    if names:
        rows = rows.filter(name__in=names)
    points: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for name, step, value in rows.order_by("name", "step", "id").values_list(
        "name", "step", "value"
    ):
        points[name].append((step, value))
    series = {}
    for name, values in points.items():
        if len(values) <= max_points:
            series[name] = [[s, v] for s, v in values]
            continue
        size = -(-len(values) // max_points)  # ceil
        series[name] = [
            [chunk[-1][0], sum(v for _, v in chunk) / len(chunk)]
            for chunk in (values[i : i + size] for i in range(0, len(values), size))
        ]
    return series
