"""The wiring: settings, URLs, ASGI routing and the Celery app.

The Celery app is imported here so that ``@shared_task`` binds to it in every process.
"""

from controlplane.celery import app as celery_app

__all__ = ("celery_app",)
