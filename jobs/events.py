"""Realtime events of a job, sent to its websocket group ``job.<id>`` after commit.

Every message carries ``type`` and the schema version ``v``. Log and metric events carry
their row id, so a client that reconnects asks for what came after the last id it saw.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from controlplane import degraded

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1


def group(job_id: int) -> str:
    return f"job.{job_id}"


def send(job_id: int, payload: dict[str, Any]) -> None:
    """Send now (callers are past their commit, or not in a transaction)."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(
            group(job_id), {"type": "job.event", "event": {"v": SCHEMA_VERSION, **payload}}
        )
    except degraded.UNREACHABLE as exc:  # Redis is away: one line per outage
        degraded.REDIS.failed(exc)
    except Exception:  # a realtime hiccup must never fail the write that caused it
        log.warning("could not broadcast an event of job %s", job_id, exc_info=True)
    else:
        degraded.REDIS.ok()


def send_on_commit(job_id: int, payload: dict[str, Any]) -> None:
    transaction.on_commit(lambda: send(job_id, payload))


def job_state(job) -> dict[str, Any]:
    return {
        "type": "state",
        "job": job.pk,
        "state": job.state,
        "reason": job.reason,
        "restarts": job.restarts,
        "preemptions": job.preemptions,
        "exit_code": job.exit_code,
    }


def job_changed(job) -> None:
    """The job's state, reason or counters changed: tell its watchers after commit."""
    send_on_commit(job.pk, job_state(job))
