"""Control-plane tasks of the serving app (thin: the work is in serving.deployments)."""

from __future__ import annotations

from celery import shared_task

from serving.deployments import controller
from serving.deployments.services import RECONCILE_TASK


@shared_task(name=RECONCILE_TASK, ignore_result=True)
def reconcile() -> dict:
    """One controller pass over every deployment."""
    return controller.reconcile_all()
