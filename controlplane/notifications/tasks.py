"""``notifications.deliver``: one webhook delivery, retried with exponential backoff."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from controlplane.notifications import services


@shared_task(name="notifications.deliver", bind=True, max_retries=None, acks_late=True)
def deliver(self, delivery_id: int) -> str:
    outcome = services.attempt(delivery_id)
    if outcome is None:
        return "nothing to do"
    if outcome:
        return "delivered"
    tries = self.request.retries + 1
    if tries >= settings.WEBHOOK_TRIES:
        services.give_up(delivery_id)
        return f"failed after {tries} tries"
    raise self.retry(countdown=settings.WEBHOOK_RETRY_SECONDS * 2 ** (tries - 1))


@shared_task(name="notifications.resend")
def resend() -> int:
    """Beat, every minute: deliveries whose task was lost are queued again."""
    return len(services.resend_stuck())
