"""What a running job produces, recorded for it: log chunks (with a per-job cap), metrics
and checkpoints (with the keep-last-K policy). Each is also sent to the job's watchers.

A write from a running node carries its ``fence`` (node id, claim): it is accepted only
while that run still owns the node, so an attempt that was given up on (its worker froze
or was cut off past its lease) cannot add logs, metrics or checkpoints to the job once
another attempt may be running."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from jobs import events, rollups, signals, storage
from jobs.lifecycle import Fence, holds, remove_tree
from jobs.models import Checkpoint, Job, LogChunk, Metric

MAX_METRIC_NAME = 100
MAX_METRICS_PER_REPORT = 100


def record_logs(
    job_id: int, attempt: int, node: int, text: str, fence: Fence | None = None
) -> LogChunk | None:
    """Append output; past the job's cap, one truncation marker and then nothing."""
    if not text:
        return None
    cap = settings.JOB_LOG_CAP_BYTES
    with transaction.atomic():
        if not holds(fence):
            return None
        job = Job.objects.select_for_update().only("log_bytes", "log_truncated").get(pk=job_id)
        if job.log_truncated:
            return None
        data = text.encode("utf-8", "replace")
        truncated = job.log_bytes + len(data) > cap
        if truncated:
            room = max(0, cap - job.log_bytes)
            text = data[:room].decode("utf-8", "ignore") + (
                f"\n[log truncated: this job's output passed its limit of {cap} bytes; "
                "the rest is not kept]\n"
            )
        Job.objects.filter(pk=job_id).update(
            log_bytes=F("log_bytes") + len(data), log_truncated=truncated
        )
        chunk = LogChunk.objects.create(job_id=job_id, attempt=attempt, node=node, text=text)
    events.send(
        job_id, {"type": "log", "id": chunk.pk, "attempt": attempt, "node": node, "text": text}
    )
    return chunk


def _clean_values(values: dict[str, Any]) -> dict[str, float]:
    clean = {}
    for name, value in list(values.items())[:MAX_METRICS_PER_REPORT]:
        if not isinstance(name, str) or not name or len(name) > MAX_METRIC_NAME:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            clean[name] = float(value)
    return clean


def record_metrics(
    job_id: int,
    attempt: int,
    step: int,
    values: dict[str, Any],
    total: int | None = None,
    fence: Fence | None = None,
    source: str = "",
) -> list[Metric]:
    """Store one report (``step`` and named numbers); non-finite or odd values are dropped.
    ``source``: where it was read when not from the SDK ("tensorboard")."""
    clean = _clean_values(values)
    if not clean:
        return []
    now = timezone.now()
    progress = {"step": step, "metrics": clean, "time": now.isoformat()}
    if source:
        progress["source"] = source
    with transaction.atomic():
        if not holds(fence):
            return []
        project_id, before = Job.objects.filter(pk=job_id).values_list("project_id", "progress")[0]
        # A report without a total keeps the one an earlier report gave (the final
        # summary of a run must not turn "300 / 300" into "300").
        if total or (before or {}).get("total"):
            progress["total"] = int(total or before["total"])
        rows = Metric.objects.bulk_create(
            [
                Metric(job_id=job_id, attempt=attempt, step=step, name=n, value=v, created_at=now)
                for n, v in clean.items()
            ]
        )
        rollups.add_report(job_id, rows)
        Job.objects.filter(pk=job_id).update(progress=progress)
        transaction.on_commit(
            lambda: signals.metrics_recorded.send(
                sender=Metric, job_id=job_id, step=step, values=clean
            )
        )
    last_id = max((r.pk for r in rows if r.pk), default=None)
    events.send(
        job_id,
        {"type": "metrics", "id": last_id, "step": step, "values": clean,
         "total": progress.get("total"), "time": progress["time"]},
    )  # fmt: skip
    events.send_to_lists(
        project_id,
        job_id,
        {"type": "progress", "job": job_id, "step": step, "total": progress.get("total")},
    )
    return rows


#: Progress read from a workload's output rather than reported through the SDK.
READ_SOURCES = {"progress bar", "tensorboard"}


def record_bar_progress(job_id: int, n: int, total: int, fence: Fence | None = None) -> bool:
    """Progress read from the job's progress bar (tqdm), for a job that reports none
    through the SDK: an SDK report (which has metrics) always wins."""
    now = timezone.now()
    with transaction.atomic():
        if not holds(fence):
            return False
        project_id, before = Job.objects.filter(pk=job_id).values_list("project_id", "progress")[0]
        before = before or {}
        if before.get("metrics") and before.get("source") not in READ_SOURCES:
            return False  # the SDK reports it
        progress = {"step": n, "total": total, "metrics": before.get("metrics") or {},
                    "time": now.isoformat(), "source": "progress bar"}  # fmt: skip
        Job.objects.filter(pk=job_id).update(progress=progress)
    event = {"type": "progress", "job": job_id, "step": n, "total": total}
    events.send(job_id, event, project_id=project_id)
    return True


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def storage_left(project_id: int) -> int | None:
    """Bytes the project may still store (None: no quota)."""
    from controlplane.tenancy.models import Project
    from serving.services import quota_left  # serving builds on jobs: imported late

    return quota_left(Project.objects.get(pk=project_id))


def record_outputs_size(job_id: int, size: int, fence: Fence | None = None) -> bool:
    """What the job's outputs take now (a node measured them as it ended)."""
    with transaction.atomic():
        if not holds(fence):
            return False
        Job.objects.filter(pk=job_id).update(outputs_bytes=size)
    events.send(job_id, {"type": "outputs", "bytes": size})
    return True


def record_checkpoint(
    job_id: int,
    attempt_id: int | None,
    step: int,
    path: str,
    metrics: dict | None = None,
    fence: Fence | None = None,
) -> Checkpoint | None:
    """Register a complete checkpoint; prune the oldest beyond the job's keep policy."""
    root = storage.checkpoint_root(job_id)
    target = Path(path)
    if not target.exists() or not storage.is_inside(target, root):
        return None  # only checkpoints written where the job was told to write them
    with transaction.atomic():
        if not holds(fence):
            return None
        job = Job.objects.select_for_update().only("checkpoint_keep").get(pk=job_id)
        checkpoint, _ = Checkpoint.objects.update_or_create(
            job_id=job_id,
            step=step,
            defaults={
                "attempt_id": attempt_id,
                "path": str(target),
                "size_bytes": _size(target),
                "metrics": _clean_values(metrics or {}),
                "created_at": timezone.now(),
            },
        )
        stale = list(
            Checkpoint.objects.filter(job_id=job_id).order_by("-step")[job.checkpoint_keep :]
        )
        Checkpoint.objects.filter(pk__in=[c.pk for c in stale]).delete()
    for old in stale:
        if old.path != checkpoint.path:
            remove_tree(old.path, root)
    events.send(
        job_id,
        {
            "type": "checkpoint",
            "id": checkpoint.pk,
            "step": step,
            "path": storage.shown(checkpoint.path),
            "size": checkpoint.size_bytes,
        },
    )
    return checkpoint


def record_model(
    job_id: int, path: str, metrics: dict | None = None, fence: Fence | None = None
) -> bool:
    """Note the finished model a job offers the registry (registered if the job succeeds).

    Only a directory inside the job's own storage with a ``config.json`` counts."""
    target = Path(path)
    if not storage.is_inside(target, storage.job_root(job_id)):
        return False
    if not (target / "config.json").is_file():
        return False
    with transaction.atomic():
        if not holds(fence):
            return False
        Job.objects.filter(pk=job_id).update(
            model_path=str(target.resolve()), model_metrics=_clean_values(metrics or {})
        )
    return True
