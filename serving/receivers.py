"""What the serving app does when other apps' events happen."""

from __future__ import annotations

import logging
from typing import Any

from serving import services

log = logging.getLogger(__name__)


def register_final_model(sender: Any, job_id: int, **kwargs: Any) -> None:
    """A job succeeded: if it offered a final model, register it (never fail the caller)."""
    try:
        version = services.register_succeeded_job(job_id)
    except Exception:
        log.exception("could not register the final model of job %s", job_id)
        return
    if version is not None:
        log.info("registered %s from job %s", version, job_id)
