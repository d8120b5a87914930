"""Periodic housekeeping for tenancy (thin: the work is in services)."""

from celery import shared_task
from django.conf import settings

from controlplane.tenancy import services


@shared_task(name="tenancy.purge_audit_events")
def purge_audit_events() -> int:
    return services.purge_audit_events(settings.AUDIT_RETENTION_DAYS)
