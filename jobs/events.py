"""Realtime events of a job, sent to its websocket group ``job.<id>`` after commit.

Every message carries ``type`` and the schema version ``v``. Log and metric events carry
their row id, so a client that reconnects asks for what came after the last id it saw.
"""

from __future__ import annotations

import logging
from typing import Any

from channels.layers import get_channel_layer
from django.db import transaction

from controlplane import degraded, realtime

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1


def group(job_id: int) -> str:
    return f"job.{job_id}"


def project_group(project_id: int) -> str:
    """Where the jobs list of a project listens: state changes and progress of its jobs."""
    return f"jobs.project.{project_id}"


def send(job_id: int, payload: dict[str, Any], project_id: int | None = None) -> None:
    """Send now (callers are past their commit, or not in a transaction); to the job's
    watchers, and to its project's job lists when ``project_id`` is given."""
    groups = [group(job_id)] + ([project_group(project_id)] if project_id is not None else [])
    _send(groups, payload, job_id)


def send_to_lists(project_id: int, job_id: int, payload: dict[str, Any]) -> None:
    """Only to the project's job lists (progress, which the job page gets as metrics)."""
    _send([project_group(project_id)], payload, job_id)


def _send(groups: list[str], payload: dict[str, Any], job_id: int) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": "job.event", "event": {"v": SCHEMA_VERSION, **payload}}
    try:
        realtime.group_send(layer, groups, message)
    except degraded.UNREACHABLE as exc:  # Redis is away: one line per outage
        degraded.REDIS.failed(exc)
    except Exception:  # a realtime hiccup must never fail the write that caused it
        log.warning("could not broadcast an event of job %s", job_id, exc_info=True)
    else:
        degraded.REDIS.ok()


def send_on_commit(job_id: int, payload: dict[str, Any], project_id: int | None = None) -> None:
    transaction.on_commit(lambda: send(job_id, payload, project_id))


def job_state(job) -> dict[str, Any]:
    return {
        "type": "state",
        "job": job.pk,
        "state": job.state,
        "reason": job.reason,
        "restarts": job.restarts,
        "preemptions": job.preemptions,
        "exit_code": job.exit_code,
        "progress": job.progress,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def job_changed(job) -> None:
    """The job's state, reason or counters changed: tell its watchers after commit."""
    send_on_commit(job.pk, job_state(job), job.project_id)
