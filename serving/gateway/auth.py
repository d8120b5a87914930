"""Who is calling: a control-plane API token (``Authorization: Bearer cp_...``) or the
browser's session (for the playground on a deployment's page; it must also send the
CSRF cookie's value in ``X-CSRFToken``). Answers are cached for ``TTL`` seconds and
dropped at once when tokens or memberships change."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings

TTL = 60.0
BAD_TTL = 10.0
MAX_ENTRIES = 10_000


class Unauthorized(Exception):
    """The caller is not authenticated; the message says why."""


@dataclass(frozen=True)
class Principal:
    user_id: int
    username: str
    superuser: bool
    projects: frozenset[int]

    def sees(self, project_id: int) -> bool:
        return self.superuser or project_id in self.projects


def _principal(user) -> Principal:
    from controlplane.tenancy.models import Membership

    projects = frozenset(Membership.objects.filter(user=user).values_list("project_id", flat=True))
    return Principal(user.pk, user.get_username(), bool(user.is_superuser), projects)


def _from_token(raw: str, ip: str | None) -> Principal:
    from django.db import close_old_connections

    from controlplane.tenancy import services

    close_old_connections()
    try:
        token = services.authenticate_token(raw, ip=ip)
    except services.TokenError as exc:
        raise Unauthorized(str(exc)) from None
    return _principal(token.user)


def _from_session(session_key: str) -> Principal:
    from django.contrib.auth import get_user_model
    from django.contrib.sessions.backends.base import SessionBase
    from django.db import close_old_connections
    from django.utils.module_loading import import_string

    close_old_connections()
    store: SessionBase = import_string(f"{settings.SESSION_ENGINE}.SessionStore")(session_key)
    user_id = store.get("_auth_user_id")
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first() if user_id else None
    if user is None:
        raise Unauthorized("Your session has ended: log in again.")
    return _principal(user)


class Authenticator:
    def __init__(self) -> None:
        self._cache: OrderedDict[str, tuple[float, Principal | str]] = OrderedDict()

    def clear(self) -> None:
        self._cache.clear()

    def _get(self, key: str) -> Principal | str | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            self._cache.pop(key, None)
            return None
        return entry[1]

    def _put(self, key: str, value: Principal | str) -> None:
        ttl = TTL if isinstance(value, Principal) else BAD_TTL
        self._cache[key] = (time.monotonic() + ttl, value)
        if len(self._cache) > MAX_ENTRIES:
            self._cache.popitem(last=False)

    async def _cached(self, key: str, load, *args) -> Principal:
        found = self._get(key)
        if found is None:
            try:
                found = await sync_to_async(load, thread_sensitive=False)(*args)
            except Unauthorized as exc:
                found = str(exc)
            self._put(key, found)
        if isinstance(found, str):
            raise Unauthorized(found)
        return found

    async def authenticate(self, headers: dict[bytes, bytes], ip: str | None) -> Principal:
        header = headers.get(b"authorization", b"").decode("latin1").strip()
        if header:
            scheme, _, raw = header.partition(" ")
            raw = raw.strip()
            if scheme.lower() != "bearer" or not raw or " " in raw:
                raise Unauthorized("Malformed Authorization header: send 'Bearer <token>'.")
            key = "t:" + hashlib.sha256(raw.encode()).hexdigest()
            return await self._cached(key, _from_token, raw, ip)
        cookies = _cookies(headers.get(b"cookie", b"").decode("latin1"))
        session = cookies.get(settings.SESSION_COOKIE_NAME)
        if not session:
            raise Unauthorized(
                "Missing bearer API key: send 'Authorization: Bearer <token>' with a "
                "control-plane API token."
            )
        csrf = cookies.get(settings.CSRF_COOKIE_NAME, "")
        sent = headers.get(b"x-csrftoken", b"").decode("latin1")
        if not csrf or not hmac.compare_digest(csrf, sent):
            raise Unauthorized("A browser session must send its CSRF token in X-CSRFToken.")
        return await self._cached("s:" + session, _from_session, session)


def _cookies(header: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name and name not in out:
            out[name] = value
    return out
