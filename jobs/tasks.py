"""Control-plane tasks of the jobs app (thin: the work is in lifecycle and scheduler)."""

from __future__ import annotations

from celery import shared_task

from jobs import lifecycle, scheduler


@shared_task(name=lifecycle.TICK_TASK, ignore_result=True)
def tick() -> dict:
    """Reap lost attempts, stop overdue ones, send unclaimed starts again, then one
    scheduling pass."""
    lost = lifecycle.reap()
    resent = scheduler.resend_unclaimed()
    decision = scheduler.schedule()
    return {
        "lost": lost,
        "resent": resent,
        "placed": len(decision.placed),
        "preempted": len(decision.preempted),
    }
