"""Job and attempt states, which of them are terminal, and the guard that keeps them so.

A job is PENDING until the scheduler places it (SCHEDULED), RUNNING once its processes
start, and ends SUCCEEDED, FAILED or CANCELLED. A lost or preempted attempt sends its job
back to PENDING. Terminal states are final: ``check_transition`` refuses to leave them.
"""

from __future__ import annotations

from django.db import models


class JobState(models.TextChoices):
    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    def is_terminal(self) -> bool:
        return self in JOB_TERMINAL


JOB_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
JOB_ACTIVE = frozenset({JobState.SCHEDULED, JobState.RUNNING})  # holding GPUs

_JOB_MOVES = {
    JobState.PENDING: {JobState.SCHEDULED, JobState.CANCELLED, JobState.FAILED},
    JobState.SCHEDULED: {
        JobState.RUNNING,
        JobState.PENDING,
        JobState.CANCELLED,
        JobState.FAILED,
        JobState.SUCCEEDED,
    },
    JobState.RUNNING: {
        JobState.PENDING,
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.CANCELLED,
    },
}


class JobKind(models.TextChoices):
    """What a job is. Users submit training jobs; the serving app creates the others."""

    TRAINING = "training"  # a user's job: a script, a module, the recipes
    REPLICA = "replica"  # a serving replica of a deployment: a port, a readiness event
    BATCH = "batch"  # batch inference over a JSONL of prompts


class AttemptState(models.TextChoices):
    SCHEDULED = "SCHEDULED"  # placed, GPUs reserved, start messages sent
    RUNNING = "RUNNING"  # at least one node's processes started
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    LOST = "LOST"  # a node's lease expired: worker dead, host gone, network cut
    PREEMPTED = "PREEMPTED"  # stopped to make room, or its worker shut down

    def is_terminal(self) -> bool:
        return self in ATTEMPT_TERMINAL


ATTEMPT_LIVE = frozenset({AttemptState.SCHEDULED, AttemptState.RUNNING})
ATTEMPT_TERMINAL = frozenset(set(AttemptState) - ATTEMPT_LIVE)


class Priority(models.IntegerChoices):
    LOW = 0, "low"
    NORMAL = 1, "normal"
    HIGH = 2, "high"


PRIORITY_BY_NAME = {p.label: p.value for p in Priority}


class StopReason(models.TextChoices):
    """Why the control plane asked an attempt's processes to stop."""

    CANCEL = "cancel"
    PREEMPT = "preempt"
    RUNTIME = "runtime"  # max_runtime exceeded
    PEER_FAILED = "peer_failed"  # a node of the attempt failed
    LOST = "lost"  # a node's lease expired
    NOT_STARTED = "not_started"  # a node was never started by its host (no restart counted)
    ENVIRONMENT = "environment"  # a node's environment could not be built (no restart)
    DRAIN = "drain"  # its worker is shutting down


class InvalidTransition(Exception):
    pass


def check_transition(current: str, new: str) -> None:
    """Raise ``InvalidTransition`` unless a job may move from ``current`` to ``new``."""
    if current == new:
        return
    if JobState(current).is_terminal():
        raise InvalidTransition(f"job is {current}, which is final")
    if JobState(new) not in _JOB_MOVES[JobState(current)]:
        raise InvalidTransition(f"a job cannot go from {current} to {new}")
