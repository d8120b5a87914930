"""The Celery app. JSON only; each worker consumes its host's queue ``host.<CP_HOSTNAME>``
and, unless ``CP_WORKER_CONTROL_QUEUE=false``, the shared ``control`` queue.

Start a worker host with ``celery -A controlplane worker``; queues, concurrency and host
name come from the environment (see settings).
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("controlplane")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
