"""Websocket routes of the monitoring app (mounted by controlplane.asgi)."""

from django.urls import path

from monitoring.consumers import (
    ClusterTelemetryConsumer,
    HostTelemetryConsumer,
    JobTelemetryConsumer,
    PingConsumer,
)

websocket_urlpatterns = [
    path("ws/ping/", PingConsumer.as_asgi()),
    path("ws/telemetry/", ClusterTelemetryConsumer.as_asgi()),
    path("ws/telemetry/hosts/<int:worker_id>/", HostTelemetryConsumer.as_asgi()),
    # Per holder of GPUs: jobs now; deployments will be ws/telemetry/deployments/<id>/.
    path("ws/telemetry/jobs/<int:holder_id>/", JobTelemetryConsumer.as_asgi()),
]
