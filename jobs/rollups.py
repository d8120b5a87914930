"""Metric rollups: each job's metrics summarized as they are reported, so a chart of a
series of 100,000 points reads some 1,500 rows instead of every point, and the job page's
table of values reads one row per metric.

A report adds its step to one bucket per width in ``WIDTHS`` (aligned ranges of steps:
``bucket = step // width``) and to the whole-series row (width 0), with one atomic
``INSERT ... ON CONFLICT DO UPDATE`` (counts and sums add up, so concurrent reports of
one job need no lock). Rows written another way (a bulk import, a backfill) are summarized
with ``rebuild(job_id)``.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import connection, transaction

from jobs.models import Metric, MetricRollup

#: Bucket widths in steps. A series of ``n`` steps drawn in at most ``p`` points uses the
#: narrowest width with ``n / width <= p``: between p/4 and p points.
WIDTHS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)
COLUMNS = (
    "job_id", "name", "width", "bucket", "n", "total", "first_step", "last_step",
    "last_value", "last_time", "last_id",
)  # fmt: skip


def _upsert_sql(rows: int) -> str:
    table = connection.ops.quote_name(MetricRollup._meta.db_table)
    least, greatest = ("min", "max") if connection.vendor == "sqlite" else ("LEAST", "GREATEST")
    one = "(" + ", ".join(["%s"] * len(COLUMNS)) + ")"
    # Names are the model's own; every value is a parameter.
    return (
        f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES {', '.join([one] * rows)} "  # noqa: S608
        "ON CONFLICT (job_id, name, width, bucket) DO UPDATE SET "
        f"n = {table}.n + excluded.n, total = {table}.total + excluded.total, "
        f"first_step = {least}({table}.first_step, excluded.first_step), "
        f"last_value = CASE WHEN excluded.last_step >= {table}.last_step "
        f"THEN excluded.last_value ELSE {table}.last_value END, "
        f"last_step = {greatest}({table}.last_step, excluded.last_step), "
        f"last_time = {greatest}({table}.last_time, excluded.last_time), "
        f"last_id = {greatest}({table}.last_id, excluded.last_id)"
    )


def add_report(job_id: int, rows: Iterable[Metric]) -> None:
    """Fold one report's rows (one step, several names) into the job's rollups; call it
    in the transaction that inserted them."""
    time_field = Metric._meta.get_field("created_at")
    params: list = []
    count = 0
    for row in rows:
        at = time_field.get_db_prep_value(row.created_at, connection)
        for width in (0, *WIDTHS):
            bucket = row.step // width if width else 0
            params += [job_id, row.name, width, bucket, 1, row.value, row.step, row.step,
                       row.value, at, row.pk or 0]  # fmt: skip
            count += 1
    if count:
        with connection.cursor() as cursor:
            cursor.execute(_upsert_sql(count), params)


def rebuild(job_id: int, metric_model=Metric, rollup_model=MetricRollup) -> int:
    """Summarize every stored point of a job again (after rows were written without
    ``add_report``; the migration passes its historical models); returns the number of
    rollup rows."""
    made = 0
    with transaction.atomic():
        rollup_model.objects.filter(job_id=job_id).delete()
        points = (
            metric_model.objects.filter(job_id=job_id)
            .order_by("name", "step", "id")
            .values_list("name", "step", "value", "created_at", "id")
        )
        current, buckets = None, {}
        for name, step, value, at, pk in points.iterator(chunk_size=20000):
            if name != current:
                made += _save(rollup_model, job_id, current, buckets)
                current, buckets = name, {}
            for width in (0, *WIDTHS):
                key = (width, step // width if width else 0)
                b = buckets.get(key)
                if b is None:
                    buckets[key] = [1, value, step, step, value, at, pk]
                else:  # ordered by step then id: each point is the bucket's latest
                    b[0] += 1
                    b[1] += value
                    b[3:7] = [step, value, max(b[5], at), max(b[6], pk)]
        made += _save(rollup_model, job_id, current, buckets)
    return made


def _save(model, job_id: int, name: str | None, buckets: dict[tuple[int, int], list]) -> int:
    if name is None:
        return 0
    model.objects.bulk_create(
        [
            model(
                job_id=job_id,
                name=name,
                width=w,
                bucket=k,
                n=b[0],
                total=b[1],
                first_step=b[2],
                last_step=b[3],
                last_value=b[4],
                last_time=b[5],
                last_id=b[6],
            )
            for (w, k), b in buckets.items()
        ],
        batch_size=2000,
    )
    return len(buckets)


def width_for(span: int, max_points: int) -> int:
    """The narrowest width that draws ``span`` steps in at most ``max_points`` buckets
    (the widest when none does: the caller merges those)."""
    for width in WIDTHS:
        if span / width <= max_points:
            return width
    return WIDTHS[-1]


def summaries(job_id: int) -> dict[str, MetricRollup]:
    """Each metric's whole-series row, by name."""
    return {r.name: r for r in MetricRollup.objects.filter(job_id=job_id, width=0)}


def buckets(
    job_id: int, name: str, width: int, max_points: int, with_time: bool
) -> list[list[float]]:
    """``[[last step, mean, (unix time)], ...]`` of one metric at ``width``; when that
    is still more than ``max_points`` buckets, neighbours are merged (weighted by count)."""
    rows = list(
        MetricRollup.objects.filter(job_id=job_id, name=name, width=width)
        .order_by("bucket")
        .values_list("n", "total", "last_step", "last_time")
    )
    group = -(-len(rows) // max_points) if max_points > 0 else 1
    out = []
    for i in range(0, len(rows), group):
        chunk = rows[i : i + group]
        n = sum(r[0] for r in chunk)
        step, at = chunk[-1][2], max(r[3] for r in chunk)
        mean = sum(r[1] for r in chunk) / n
        out.append([step, mean, at.timestamp()] if with_time else [step, mean])
    return out
