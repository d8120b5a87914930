"""A sweep moves on when its trials' jobs report and end (after their commits)."""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import receiver

from jobs import signals
from jobs.states import JOB_TERMINAL

log = logging.getLogger(__name__)


@receiver(signals.job_transitioned)
def on_job_transitioned(sender: Any, job_id: int, new: str, **_: Any) -> None:
    if new not in JOB_TERMINAL:
        return
    from jobs.sweeps import services

    try:
        services.trial_ended(job_id, new)
    except Exception:  # the job's own change is committed; the sweep must not undo it
        log.exception("sweep: could not record the end of job %s", job_id)


@receiver(signals.metrics_recorded)
def on_metrics_recorded(
    sender: Any, job_id: int, step: int, values: dict[str, float], **_: Any
) -> None:
    from jobs.sweeps import services

    try:
        services.reported(job_id, step, values)
    except Exception:  # a report is stored already; a failed judgement waits for the next
        log.exception("sweep: could not judge the report of job %s", job_id)
