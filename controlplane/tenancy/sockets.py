"""What every websocket consumer does about access that changes while it is open.

A socket is authorized once, at its handshake; a token revoked or a member removed later
must not keep receiving. So every consumer (``AccessWatch``):

- joins its user's group ``user.<id>``: revoking one of the user's tokens, removing the
  user from a project or deactivating them sends ``access.revoked`` there (after commit),
  and the socket closes (4401); the client reconnects and is authorized afresh;
- re-checks on a timer (``CP_WS_RECHECK_SECONDS``) that its token still authenticates and
  that the user may still see what it watches (``still_allowed``), closing (4403) if not,
  in case a message was missed (Redis away, another control plane's layer).

Browsers' Origin is checked against the request's own scheme, host and port
(``SameOriginValidator``), as Django's CSRF check does for forms.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.http.request import validate_host
from django.utils import timezone

from controlplane import degraded, realtime
from controlplane.tenancy.models import ApiToken, TokenState

log = logging.getLogger(__name__)
LAYERS = ("default", "telemetry")  # every layer a consumer may listen on


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


def close_sockets_of(user_id: int) -> None:
    """After this transaction commits, close every open websocket of the user."""

    def send() -> None:
        for alias in LAYERS:
            if alias not in settings.CHANNEL_LAYERS:
                continue
            layer = get_channel_layer(alias)
            degraded.best_effort(
                lambda layer=layer: realtime.group_send(
                    layer, [user_group(user_id)], {"type": "access.revoked"}
                )
            )

    transaction.on_commit(send)


def _token_active(token_id: int) -> bool:
    token = ApiToken.objects.select_related("user").filter(pk=token_id).first()
    return (
        token is not None
        and token.state_at(timezone.now()) == TokenState.ACTIVE
        and token.user.is_active
    )


def _user_active(user_id: int) -> bool:
    return get_user_model().objects.filter(pk=user_id, is_active=True).exists()


class AccessWatch:
    """Mixed into a consumer: ``await self.watch_access()`` once accepted,
    ``await self.stop_watching()`` on disconnect; override ``allowed_now`` (sync, runs in
    a thread) with the consumer's own access check."""

    channel_layer: Any
    channel_name: str
    scope: dict

    async def watch_access(self) -> None:
        user = self.scope["user"]
        self._access_group = user_group(user.pk)
        await self.channel_layer.group_add(self._access_group, self.channel_name)
        self._access_task = asyncio.create_task(self._recheck())

    async def stop_watching(self) -> None:
        task = getattr(self, "_access_task", None)
        if task is not None:
            task.cancel()
        if getattr(self, "_access_group", None):
            await self.channel_layer.group_discard(self._access_group, self.channel_name)

    async def access_revoked(self, message: dict) -> None:
        await self.close(code=4401)  # type: ignore[attr-defined]

    async def _recheck(self) -> None:
        while True:
            await asyncio.sleep(settings.WS_RECHECK_SECONDS)
            try:
                ok = await database_sync_to_async(self._still_allowed)()
            except Exception:  # the database is away: keep the socket, try again later
                log.warning("could not re-check a websocket's access", exc_info=True)
                continue
            if not ok:
                await self.close(code=4403)  # type: ignore[attr-defined]
                return

    def _still_allowed(self) -> bool:
        user = self.scope["user"]
        token_id = self.scope.get("auth_token_id")
        if token_id is not None and not _token_active(token_id):
            return False
        if not _user_active(user.pk):
            return False
        return self.allowed_now(user)

    def allowed_now(self, user: Any) -> bool:
        return True


class SameOriginValidator:
    """ASGI middleware for websockets: a browser (it sends ``Origin``) is let in only from
    this very site: the origin's scheme, host and port must be the request's own (or one
    of ``CSRF_TRUSTED_ORIGINS``), and the host one of ``ALLOWED_HOSTS``. A client that sends
    no Origin is not a browser and cannot be the victim of a cross-site request."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket":
            headers = dict(scope.get("headers", []))
            origin = headers.get(b"origin")
            if origin is not None and not self.allowed(origin.decode("latin1"), headers, scope):
                return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)

    @staticmethod
    def allowed(origin: str, headers: dict, scope: dict) -> bool:
        if origin in settings.CSRF_TRUSTED_ORIGINS:
            return True
        host = headers.get(b"host", b"").decode("latin1")
        if not host:
            return False
        secure = scope.get("scheme") == "wss" or (
            settings.BEHIND_PROXY and headers.get(b"x-forwarded-proto", b"") == b"https"
        )
        parts = urlsplit(origin)
        try:
            origin_port = parts.port or (443 if parts.scheme == "https" else 80)
            own = urlsplit(f"//{host}")
            own_port = own.port or (443 if secure else 80)
        except ValueError:
            return False
        allowed_hosts = list(settings.ALLOWED_HOSTS)
        if settings.DEBUG and not allowed_hosts:
            allowed_hosts = ["localhost", "127.0.0.1", "[::1]"]
        return (
            parts.scheme == ("https" if secure else "http")
            and (parts.hostname or "") == (own.hostname or "")
            and origin_port == own_port
            and validate_host(own.hostname or "", allowed_hosts)
        )
