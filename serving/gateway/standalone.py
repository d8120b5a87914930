"""The gateway's ASGI app when it runs alone (``python -m serving.gateway``): Django is
set up for its ORM, then the app adds ``/health`` and ``/metrics``."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
django.setup()

from serving.gateway.app import build_app  # noqa: E402

application = build_app(standalone=True)
