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


def replica_changed(sender: Any, job_id: int, **kwargs: Any) -> None:
    """A job's endpoint became ready or one of its attempts ended: if it is a replica,
    update its deployment now (the periodic pass would, a second later)."""
    from serving.deployments import controller

    try:
        controller.on_replica_event(job_id)
    except Exception:
        log.exception("could not update the replica of job %s", job_id)


def auth_changed(sender: Any, **kwargs: Any) -> None:
    """Tokens, users or memberships changed: gateways drop what they cached."""
    from serving.deployments import routing

    routing.publish(routing.AUTH)
