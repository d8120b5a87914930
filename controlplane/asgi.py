"""ASGI entry point: the OpenAI-compatible gateway at ``/v1/`` (a lean app of its own,
Django kept off its hot path), Django for every other HTTP path; websockets behind an
Origin check and authentication (the browser's session, or ``Authorization: Bearer``)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (after Django is set up)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from controlplane.tenancy.auth import TokenAuthMiddleware  # noqa: E402
from controlplane.tenancy.sockets import SameOriginValidator  # noqa: E402
from jobs.routing import websocket_urlpatterns as jobs_ws  # noqa: E402
from monitoring.routing import websocket_urlpatterns as monitoring_ws  # noqa: E402
from serving.gateway.app import application as gateway_app  # noqa: E402
from serving.routing import websocket_urlpatterns as serving_ws  # noqa: E402


async def http(scope, receive, send):
    """``/v1/...`` to the gateway, the rest to Django."""
    if scope["path"].startswith("/v1/"):
        return await gateway_app(scope, receive, send)
    return await django_asgi_app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http,
        "websocket": SameOriginValidator(
            AuthMiddlewareStack(
                TokenAuthMiddleware(URLRouter([*monitoring_ws, *jobs_ws, *serving_ws]))
            )
        ),
    }
)
