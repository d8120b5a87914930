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
