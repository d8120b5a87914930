"""Websocket routes of the monitoring app (mounted by controlplane.asgi)."""

from django.urls import path

from monitoring.consumers import PingConsumer

websocket_urlpatterns = [
    path("ws/ping/", PingConsumer.as_asgi()),
]
