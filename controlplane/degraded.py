"""Working on while Redis (cache, channel layer, broker) is away.

The database holds every job's state; Redis carries only what is fast or live. So while it
is down: throttling fails open, reads that need only the database keep working, a nudge to
the scheduler is skipped (its periodic pass comes anyway), and what truly needs Redis
answers 503 with ``Retry-After`` in the API's JSON error format. Each outage is logged once
when it starts and once when it ends, not a traceback per event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis.exceptions
from django.http import HttpRequest, HttpResponse, JsonResponse
from kombu.exceptions import OperationalError as BrokerError
from rest_framework import throttling

log = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = 5

#: What a client of Redis (or of the broker on it) raises when it cannot reach it.
UNREACHABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    BrokerError,
)


class Outage:
    """Logs a dependency's failures once per outage (and how long it lasted)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None
        self.failures = 0
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.failures += 1
            if self.since is None:
                self.since = time.monotonic()
                log.warning("%s is unreachable (%s: %s)", self.what, type(exc).__name__, exc)

    def ok(self) -> None:
        if self.since is None:  # the common case: no lock, nothing to say
            return
        with self._lock:
            if self.since is not None:
                log.warning(
                    "%s is reachable again after %.1f s (%d failed call(s))",
                    self.what,
                    time.monotonic() - self.since,
                    self.failures,
                )
                self.since, self.failures = None, 0


REDIS = Outage("Redis")


def best_effort(call: Callable[[], Any], outage: Outage = REDIS) -> Any:
    """Run ``call``; if Redis is unreachable, note it and return None instead of raising."""
    try:
        result = call()
    except UNREACHABLE as exc:
        outage.failed(exc)
        return None
    outage.ok()
    return result


class _FailOpen:
    """A DRF throttle that lets the request through when its counters (in the cache, on
    Redis) cannot be read: an outage of Redis must not refuse every API call."""

    def allow_request(self, request, view) -> bool:
        try:
            allowed = super().allow_request(request, view)  # type: ignore[misc]
        except UNREACHABLE as exc:
            REDIS.failed(exc)
            return True
        if getattr(self, "key", None) is not None:  # it did read its counters from Redis
            REDIS.ok()
        return allowed


class UserRateThrottle(_FailOpen, throttling.UserRateThrottle):
    pass


class AnonRateThrottle(_FailOpen, throttling.AnonRateThrottle):
    pass


def unavailable_message() -> str:
    return (
        "Temporarily unavailable: this needs Redis, which the control plane cannot reach "
        f"right now. Retry in {RETRY_AFTER_SECONDS} s."
    )


def unavailable_response(request: HttpRequest) -> HttpResponse:
    message = unavailable_message()
    if request.path.startswith(("/api/", "/v1/")):
        response: HttpResponse = JsonResponse({"detail": message}, status=503)
    else:
        response = HttpResponse(message, status=503, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


class RedisUnavailableMiddleware:
    """Turns "Redis is unreachable" from any view into a 503 with Retry-After."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        if isinstance(exc, UNREACHABLE):
            REDIS.failed(exc)
            return unavailable_response(request)
        return None
