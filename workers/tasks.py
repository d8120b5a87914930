"""Tasks that run on a worker host (thin: they call services or report the host)."""

from __future__ import annotations

import os
import time

from celery import shared_task
from django.conf import settings


@shared_task(name="workers.ping")
def ping(payload: str = "") -> dict:
    """Answer from this host: proves a message reached its queue and came back."""
    return {"host": settings.HOSTNAME, "pid": os.getpid(), "time": time.time(), "echo": payload}


@shared_task(name="workers.run_attempt", ignore_result=True)
def run_attempt(attempt_id: int, rank: int) -> str:
    """Run and supervise node ``rank`` of an attempt on this host until it exits.

    Acked on receipt (not late): a redelivered start message finds the node claimed and
    does nothing; liveness is the node's lease, not this message.
    """
    from workers.launcher import NodeRun

    return NodeRun(attempt_id, rank).run()
