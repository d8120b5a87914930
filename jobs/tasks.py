"""Control-plane tasks of the jobs app (thin: the work is in lifecycle and scheduler)."""

from __future__ import annotations

from celery import shared_task

from jobs import lifecycle, scheduler


@shared_task(name=lifecycle.TICK_TASK, ignore_result=True)
def tick() -> dict:
    """Reap lost attempts, stop overdue ones, then one scheduling pass."""
    lost = lifecycle.reap()
    decision = scheduler.schedule()
    return {"lost": lost, "placed": len(decision.placed), "preempted": len(decision.preempted)}
