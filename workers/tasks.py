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
