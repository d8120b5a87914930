"""/healthz, /readyz, the login page and the home page."""

from __future__ import annotations

import pytest
from django.test import Client

from controlplane.cluster import services

pytestmark = pytest.mark.django_db


def test_healthz_answers_without_auth():
    response = Client().get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_reports_each_dependency_and_needs_a_live_worker(db):
    response = Client().get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"]["ok"] and checks["redis"]["ok"] and checks["broker"]["ok"]
    assert not checks["workers"]["ok"] and "heartbeated" in checks["workers"]["error"]

    services.register_worker(services.HostInfo(name="gpu-1", queue="host.gpu-1"))
    response = Client().get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"]["workers"]["online"] == ["gpu-1"]


def test_readyz_says_when_redis_is_down(db, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = Client().get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["redis"]["ok"] is False
    assert "ConnectionError" in response.json()["checks"]["redis"]["error"]


def test_the_home_page_needs_a_login_then_shows_projects_and_workers(cast):
    client = Client()
    assert client.get("/").status_code == 302
    services.register_worker(
        services.HostInfo(
            name="gpu-1",
            queue="host.gpu-1",
            gpus=[
                services.GpuSpec(
                    index=0, uuid="GPU-a", name="NVIDIA H100", memory_total=2**30, pci_bus_id=""
                )
            ],
        )
    )
    login = client.post("/login/", {"username": "bob", "password": "bob-pass-123"})
    assert login.status_code == 302
    page = client.get("/").content.decode()
    assert "alpha" in page and "beta" not in page
    assert "gpu-1" in page and "NVIDIA H100" in page and "online" in page


def test_a_wrong_password_shows_the_form_again(cast):
    response = Client().post("/login/", {"username": "bob", "password": "nope"})
    assert response.status_code == 200
    assert "didn't match" in response.content.decode()


def test_swagger_ui_is_served_without_a_cdn(db):
    page = Client().get("/api/docs/").content.decode()
    assert "swagger-ui" in page
    assert "cdn" not in page.lower()


def test_logins_are_throttled_per_user_and_address(cast, settings):
    settings.AXES_FAILURE_LIMIT = 5
    client = Client(REMOTE_ADDR="203.0.113.9")
    for _ in range(4):
        assert client.post("/login/", {"username": "bob", "password": "nope"}).status_code == 200
    assert client.post("/login/", {"username": "bob", "password": "nope"}).status_code == 429
    # Locked out: the right password does not work either, from this address.
    locked = client.post("/login/", {"username": "bob", "password": "bob-pass-123"})
    assert locked.status_code == 429
    assert "_auth_user_id" not in client.session
    # Another user, or the same user from elsewhere, is not locked out by it.
    other = Client(REMOTE_ADDR="198.51.100.4")
    assert other.post("/login/", {"username": "bob", "password": "bob-pass-123"}).status_code == 302
    assert (
        client.post("/login/", {"username": "carol", "password": "carol-pass-123"}).status_code
        == 302
    )


def test_pages_and_swagger_carry_a_content_security_policy(cast):
    client = Client()
    client.force_login(cast.bob)
    for path in ("/", "/jobs/", "/api/docs/", "/login/"):
        policy = client.get(path).headers.get("Content-Security-Policy", "")
        assert "script-src 'self'" in policy and "unsafe-eval" not in policy, path
        assert "frame-ancestors 'none'" in policy
    # Swagger's start-up script is a file of its own, not inline.
    page = client.get("/api/docs/").content.decode()
    assert "<script>" not in page
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200 and "SwaggerUIBundle" in script.content.decode()
