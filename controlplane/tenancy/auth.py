"""Authentication: ``Authorization: Bearer <token>`` for the API and websockets.

Browsers use Django's session; other clients send a personal API token. For websockets, a
browser always sends an ``Origin`` header, and a foreign one is refused; a client with no
``Origin`` is not a browser and cannot be the victim of a cross-site request.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.http import HttpRequest
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from controlplane.tenancy import services


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(address in network for network in settings.TRUSTED_PROXIES)


def client_ip(request: HttpRequest | Request) -> str | None:
    """The caller's address. Behind a proxy (``CP_BEHIND_PROXY``), and only when the
    connection comes from one of ``CP_TRUSTED_PROXIES``: the right-most X-Forwarded-For hop
    that is not a trusted proxy (the hops left of it are whatever the client wrote). Never
    anything but a valid IP address."""
    meta = request.META
    peer = _address(meta.get("REMOTE_ADDR") or "")
    if peer is None:
        return None
    forwarded = meta.get("HTTP_X_FORWARDED_FOR", "")
    if not settings.BEHIND_PROXY or not forwarded or not _trusted(peer):
        return str(peer)
    client = peer
    for hop in reversed(forwarded.split(",")[-32:]):
        address = _address(hop)
        if address is None:
            break  # a hop no proxy of ours wrote: trust stops at the last good one
        client = address
        if not _trusted(address):
            break
    return str(client)


def actor_for(request: HttpRequest | Request, via: str = "api") -> services.Actor:
    """The audit ``Actor`` for a request."""
    return services.Actor(user=request.user, ip=client_ip(request), via=via)


def bearer_from_header(value: str | bytes | None) -> str | None:
    """The token in an ``Authorization: Bearer ...`` value, '' if malformed, None if absent."""
    if not value:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin1")
    parts = value.split()
    if not parts or parts[0].lower() != "bearer":
        return None
    return parts[1] if len(parts) == 2 else ""


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """DRF authentication for personal API tokens."""

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        raw = bearer_from_header(request.META.get("HTTP_AUTHORIZATION"))
        if raw is None:
            return None
        if raw == "":
            raise exceptions.AuthenticationFailed(
                "Malformed Authorization header: use 'Authorization: Bearer <token>'."
            )
        try:
            token = services.authenticate_token(raw, ip=client_ip(request))
        except services.TokenError as exc:
            raise exceptions.AuthenticationFailed(str(exc)) from None
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class TokenAuthMiddleware:
    """ASGI middleware: a websocket with a Bearer token is that token's user.

    Runs inside ``AuthMiddlewareStack`` so a session user is already in the scope; a bad
    token closes the handshake rather than falling back to anonymous.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        headers = dict(scope.get("headers", []))
        raw = bearer_from_header(headers.get(b"authorization"))
        if raw is not None:
            token = await _token_for(raw, (scope.get("client") or [None])[0])
            if token is None:
                await send({"type": "websocket.close", "code": 4401})
                return None
            # The token is re-checked while the socket is open (tenancy/sockets.py).
            scope = dict(scope, user=token.user, auth_token_id=token.pk)
        return await self.inner(scope, receive, send)


@database_sync_to_async
def _token_for(raw: str, ip: str | None) -> Any:
    try:
        return services.authenticate_token(raw, ip=ip)
    except services.TokenError:
        return None
