"""ASGI entry point: Django for HTTP; websockets behind an Origin check and authentication
(the browser's session, or ``Authorization: Bearer <token>``)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (after Django is set up)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from controlplane.tenancy.auth import BrowserOriginValidator, TokenAuthMiddleware  # noqa: E402
from jobs.routing import websocket_urlpatterns as jobs_ws  # noqa: E402
from monitoring.routing import websocket_urlpatterns as monitoring_ws  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": BrowserOriginValidator(
            AuthMiddlewareStack(TokenAuthMiddleware(URLRouter([*monitoring_ws, *jobs_ws])))
        ),
    }
)
