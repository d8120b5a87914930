"""Pages and probes of the wiring: the home page, /healthz and /readyz."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from kombu import Connection

from controlplane.cluster.models import Worker
from controlplane.tenancy.api.base import roles_by_project
from controlplane.tenancy.models import Role
from controlplane.tenancy.services import visible_projects


@login_required
def home(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    roles = roles_by_project(request)
    projects = [
        (p, Role.ADMIN if request.user.is_superuser else roles.get(p.pk))
        for p in visible_projects(request.user)
    ]
    workers = [(w, w.is_online_at(now)) for w in Worker.objects.prefetch_related("gpus")]
    return render(
        request,
        "home.html",
        {
            "projects": projects,
            "workers": workers,
            "online": sum(1 for _, up in workers if up),
            "gpu_total": sum(len(w.gpus.all()) for w, _ in workers),
        },
    )


@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers."""
    return JsonResponse({"status": "ok"})


def _timed(check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        result = {"ok": True, **check()}
    except Exception as exc:
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    result["ms"] = round((time.perf_counter() - start) * 1000, 1)
    return result


def _database() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {"vendor": connection.vendor}


def _redis() -> dict[str, Any]:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    finally:
        client.close()
    return {"embedded": settings.EMBEDDED_REDIS}


def _broker() -> dict[str, Any]:
    if settings.BROKER_URL == settings.REDIS_URL:
        return {"same_as": "redis"}
    with Connection(settings.BROKER_URL, connect_timeout=2) as conn:
        conn.connect()
    return {"transport": Connection(settings.BROKER_URL).transport_cls}


def _workers() -> dict[str, Any]:
    online = list(Worker.objects.online().values_list("name", flat=True))
    if not online:
        raise RuntimeError(
            f"no worker has heartbeated in the last {settings.WORKER_OFFLINE_AFTER:g} s"
        )
    return {"online": online}


@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: database, Redis, broker and at least one live worker, each reported."""
    checks = {
        "database": _timed(_database),
        "redis": _timed(_redis),
        "broker": _timed(_broker),
        "workers": _timed(_workers),
    }
    ready = all(c["ok"] for c in checks.values())
    return JsonResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
    )


@csrf_exempt  # it changes nothing: a POST to no operation is a 404, not a CSRF page
def api_not_found(request: HttpRequest) -> JsonResponse:
    """A path under /api/ that names no API operation (or an id that is not a number)."""
    detail = f"No API operation at {request.path}; see /api/docs/."
    if not request.path.endswith("/"):
        detail = f"No API operation at {request.path}: API paths end with a slash (add one)."
    return JsonResponse({"detail": detail}, status=404)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """A refused CSRF check: JSON under /api/ (the API's error format), Django's page elsewhere."""
    if request.path.startswith("/api/"):
        detail = (
            f"CSRF check failed ({reason}). With a session cookie send the X-CSRFToken header;"
            " API clients should use Authorization: Bearer <token> instead."
        )
        return JsonResponse({"detail": detail}, status=403)
    from django.views.csrf import csrf_failure as django_csrf_failure

    return django_csrf_failure(request, reason)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's 400 (a request it refused before any view: too many fields, a header it
    distrusts): JSON under /api/, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": f"Bad request: {exception or 'refused'}."}, status=400)
    from django.views.defaults import bad_request as django_bad_request

    return django_bad_request(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """An unhandled error: JSON under /api/ (clients parse it), Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Server error; it was logged."}, status=500)
    from django.views.defaults import server_error as django_server_error

    return django_server_error(request)
