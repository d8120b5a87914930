"""Celery tasks of the monitoring app (thin: they call services)."""

from __future__ import annotations

from celery import shared_task

from monitoring import services


@shared_task(name="monitoring.maintain_history", ignore_result=True)
def maintain_history() -> dict[str, int]:
    """Roll 10 s buckets older than CP_TELEMETRY_FINE_HOURS up to 1 min; apply retention."""
    rolled = 0
    while True:
        done = services.roll_up()
        rolled += done
        if done < services.ROLLUP_BATCH:
            break
    return {"rolled_up": rolled, "purged": services.purge()}
