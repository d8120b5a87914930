"""Job state changes, after their commit, become webhook deliveries."""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import receiver

from jobs import signals
from jobs.states import JobState

log = logging.getLogger(__name__)
_EVENTS = {
    JobState.SUCCEEDED: "job.succeeded",
    JobState.FAILED: "job.failed",
    JobState.CANCELLED: "job.cancelled",
}


@receiver(signals.job_transitioned)
def on_job_transitioned(
    sender: Any, job_id: int, old: str, new: str, preempted: bool, **_: Any
) -> None:
    from controlplane.notifications import services

    event = "job.preempted" if preempted else _EVENTS.get(new)
    if event:
        try:
            services.job_event(job_id, event)
        except Exception:  # a notification must never fail the change that caused it
            log.warning("could not notify %s of job %s", event, job_id, exc_info=True)


@receiver(signals.sweep_finished)
def on_sweep_finished(sender: Any, sweep_id: int, state: str, **_: Any) -> None:
    from controlplane.notifications import services

    try:
        services.sweep_event(sweep_id, f"sweep.{state.lower()}")
    except Exception:
        log.warning("could not notify the end of sweep %s", sweep_id, exc_info=True)
