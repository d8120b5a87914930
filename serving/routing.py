"""Websocket routes of the serving app (mounted by controlplane.asgi)."""

from django.urls import path

from serving.consumers import DeploymentConsumer

websocket_urlpatterns = [
    path("ws/deployments/<int:deployment_id>/", DeploymentConsumer.as_asgi()),
]
