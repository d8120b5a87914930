"""Every write of the monitoring app: history buckets (bulk), each job's usage and energy
on a host, the roll-up of old 10 s buckets into 1 min ones, and retention.

The telemetry agent calls ``record_history`` and ``record_usage`` once per history step;
the beat task ``monitoring.maintain_history`` calls ``roll_up`` and ``purge``.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from monitoring.accounting import Usage
from monitoring.models import GpuHistory, HostHistory, JobUsage

ROLLUP_STEP = 60
ROLLUP_BATCH = 20_000  # fine rows handled per call, so one call stays short


def record_history(worker_id: int, bucket: dict[str, Any]) -> int:
    """Write one finished bucket (all GPUs of a host and the host) in two INSERTs.

    A bucket already written (an agent restarted within it) is kept as it was.
    """
    gpu_rows = [GpuHistory(worker_id=worker_id, **row) for row in bucket["gpus"]]
    with transaction.atomic():
        GpuHistory.objects.bulk_create(gpu_rows, ignore_conflicts=True)
        HostHistory.objects.bulk_create(
            [HostHistory(worker_id=worker_id, **bucket["host"])], ignore_conflicts=True
        )
    return len(gpu_rows) + 1


def load_usage(worker_name: str, job_ids: list[int]) -> dict[int, Usage]:
    """The totals already recorded for these jobs on this host (to continue from)."""
    found = {}
    for row in JobUsage.objects.filter(worker_name=worker_name, job_id__in=job_ids):
        found[row.job_id] = Usage(
            joules=row.joules,
            energy_source=row.energy_source,
            gpu_seconds=row.gpu_seconds,
            util_seconds=row.util_seconds,
            mem_peak=row.mem_peak,
            power_peak=row.power_peak,
            cpu_seconds=row.cpu_seconds,
            rss_peak=row.rss_peak,
            first_seen=row.first_seen,
            last_seen=row.last_seen,
        )
    return found


def record_usage(worker_name: str, usage: dict[int, Usage]) -> int:
    """Write the running totals of the jobs whose figures changed (absolute values)."""
    changed = {job_id: u for job_id, u in usage.items() if u.dirty}
    if not changed:
        return 0
    from jobs.models import Job

    existing = set(Job.objects.filter(pk__in=list(changed)).values_list("pk", flat=True))
    with transaction.atomic():
        for job_id, totals in changed.items():
            if job_id not in existing:
                continue
            JobUsage.objects.update_or_create(
                job_id=job_id, worker_name=worker_name, defaults=totals.as_fields()
            )
            totals.dirty = False
    return len(changed)


def _weighted(rows: list[dict[str, Any]], key: str) -> float | None:
    pairs = [(r[key], r["n"] or 1) for r in rows if r[key] is not None]
    weight = sum(w for _, w in pairs)
    return None if not weight else sum(v * w for v, w in pairs) / weight


def _maximum(rows: list[dict[str, Any]], key: str) -> Any:
    values = [r[key] for r in rows if r[key] is not None]
    return max(values) if values else None


def _minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


GPU_MEANS = ("util_mean", "mem_util_mean", "mem_used_mean", "power_mean", "temp_mean",
             "sm_clock_mean", "mem_clock_mean")  # fmt: skip
GPU_MAXES = ("util_max", "mem_used_max", "power_max", "temp_max")
HOST_MEANS = ("cpu_mean", "mem_used_mean", "load1_mean", "net_rx_mean", "net_tx_mean",
              "disk_read_mean", "disk_write_mean")  # fmt: skip
HOST_MAXES = ("cpu_max", "mem_used_max", "mem_total")


def _roll(model: Any, key: str, means: tuple, maxes: tuple, cutoff: datetime) -> int:
    fine = list(
        model.objects.filter(step__lt=ROLLUP_STEP, t__lt=cutoff)
        .order_by(key, "t")
        .values()[:ROLLUP_BATCH]
    )
    if not fine:
        return 0
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in fine:
        groups[(row[key], _minute(row["t"]))].append(row)
    coarse = []
    for (owner, minute), rows in groups.items():
        last = rows[-1]
        values: dict[str, Any] = {key: owner, "t": minute, "step": ROLLUP_STEP}
        values["n"] = sum(r["n"] for r in rows)
        values.update({m: _weighted(rows, m) for m in means})
        values.update({m: _maximum(rows, m) for m in maxes})
        if model is GpuHistory:
            energy = [r["energy_j"] for r in rows if r["energy_j"] is not None]
            values.update(
                worker_id=last["worker_id"],
                index=last["index"],
                energy_j=sum(energy) if energy else None,
                job_id=last["job_id"],
                project_id=last["project_id"],
            )
        coarse.append(model(**values))
    with transaction.atomic():
        model.objects.bulk_create(coarse, ignore_conflicts=True)
        model.objects.filter(pk__in=[r["id"] for r in fine]).delete()
    return len(fine)


def roll_up(now: datetime | None = None) -> int:
    """Fold 10 s buckets older than ``CP_TELEMETRY_FINE_HOURS`` into 1 min buckets.

    Works on whole minutes only (the cutoff is rounded down), so a minute is never split
    between two calls. Returns the number of fine rows folded.
    """
    now = now or timezone.now()
    cutoff = _minute(now - timedelta(hours=settings.TELEMETRY_FINE_HOURS))
    return _roll(GpuHistory, "uuid", GPU_MEANS, GPU_MAXES, cutoff) + _roll(
        HostHistory, "worker_id", HOST_MEANS, HOST_MAXES, cutoff
    )


def purge(now: datetime | None = None) -> int:
    """Delete history older than ``CP_TELEMETRY_RETENTION_DAYS``."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.TELEMETRY_RETENTION_DAYS)
    gone = GpuHistory.objects.filter(t__lt=cutoff).delete()[0]
    return gone + HostHistory.objects.filter(t__lt=cutoff).delete()[0]


def epoch(t: datetime) -> float:
    return t.astimezone(UTC).timestamp()
