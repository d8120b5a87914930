"""With Redis unreachable (the cache and channel layer pointed at a port nothing listens
on): authenticated reads and writes that need only the database still work, and what
needs Redis is a 503 with Retry-After in the API's error format, never a 500."""

from __future__ import annotations

import logging
import sqlite3

import pytest
import redis
from django.db import connection
from django.test import RequestFactory, override_settings

from controlplane import degraded
from jobs.models import Job
from tests.conftest import add_host
from tests.plugin import free_port

pytestmark = pytest.mark.django_db


@pytest.fixture
def redis_down(settings):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with override_settings(
        CACHES={
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": dead,
                "OPTIONS": {"socket_connect_timeout": 0.5},
            }
        },
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {"hosts": [dead]},
            }
        },
    ):
        yield dead


def test_the_api_reads_and_submits_while_redis_is_down(cast, api, redis_down, caplog):
    add_host("cpu-1", cpu_slots=1)
    client = api(cast.bob)
    caplog.set_level(logging.WARNING, logger="controlplane.degraded")
    for _ in range(3):  # the throttle's counters are on Redis: it lets requests through
        assert client.get("/api/v1/jobs/").status_code == 200
    created = client.post(
        "/api/v1/jobs/",
        {
            "project": "alpha",
            "name": "while-down",
            "entrypoint": ["python", "-m", "workers.recipes.causal_lm"],
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    assert Job.objects.filter(name="while-down").exists()
    assert client.get(f"/api/v1/jobs/{created.json()['id']}/").status_code == 200
    # One line for the outage, not a traceback per request or event.
    lines = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None


def test_what_needs_redis_is_a_503_with_retry_after():
    def view(request):
        raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:1")

    middleware = degraded.RedisUnavailableMiddleware(view)
    for path, kind in (("/api/v1/jobs/", "application/json"), ("/jobs/", "text/plain")):
        request = RequestFactory().get(path)
        try:
            response = view(request)
        except redis.exceptions.ConnectionError as exc:
            response = middleware.process_exception(request, exc)
        assert response.status_code == 503
        assert response["Retry-After"] == str(degraded.RETRY_AFTER_SECONDS)
        assert response["Content-Type"].startswith(kind)
        assert b"Redis" in response.content
    degraded.REDIS.ok()


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's single writer lock")
def test_reads_work_and_writes_are_503_while_another_process_holds_the_write_lock(cast, api):
    """A process frozen inside a write (SQLite: one writer at a time) must not turn every
    authenticated read into a 500; a write that cannot get the lock is a 503 to retry."""
    add_host("cpu-1", cpu_slots=1)
    client = api(cast.bob)  # its token's first use is due to be recorded: a write
    options = connection.settings_dict["OPTIONS"]
    saved = options.get("timeout")
    options["timeout"] = 0.3  # the busy timeout, so the test does not wait 30 s per write
    connection.close()
    holder = sqlite3.connect(connection.settings_dict["NAME"])
    holder.execute("BEGIN IMMEDIATE")
    try:
        assert client.get("/api/v1/jobs/").status_code == 200
        created = client.post(
            "/api/v1/jobs/",
            {
                "project": "alpha",
                "name": "locked-out",
                "entrypoint": ["python", "-m", "workers.recipes.causal_lm"],
            },
            format="json",
        )
        assert created.status_code == 503, created.content
        assert created["Content-Type"].startswith("application/json")
        assert "database" in created.json()["detail"] and int(created["Retry-After"]) > 0
    finally:
        holder.rollback()
        holder.close()
        options["timeout"] = saved
        connection.close()
    assert not Job.objects.filter(name="locked-out").exists()
    assert client.get("/api/v1/jobs/").status_code == 200
