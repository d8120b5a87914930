"""The attempt token is a credential for its own job only, and only while its node runs."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from jobs import lifecycle, storage
from jobs.models import Metric
from tests.jobs.test_lifecycle import claim, cpu_host, place  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db


def client(token: str) -> APIClient:
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return c


@pytest.fixture
def running(cpu_host, submit, cast):  # noqa: F811
    job = submit(name="mine")
    plan = claim(place(job)[0])
    other = submit(name="theirs", project="beta", user=cast.dave)
    return job, plan, other


def test_it_reads_its_own_job_and_reports_metrics_and_checkpoints(running):
    job, plan, _ = running
    assert plan.token.startswith("cpat_")
    api = client(plan.token)
    own = api.get("/api/v1/attempt/")
    assert own.status_code == 200, own.content
    assert own.json()["job"] == job.pk and own.json()["spec"]["name"] == "mine"
    sent = api.post(
        "/api/v1/attempt/metrics/", {"step": 3, "total": 10, "values": {"loss": 1.5}}, "json"
    )
    assert sent.status_code == 201, sent.content
    assert list(Metric.objects.filter(job=job).values_list("name", "value")) == [("loss", 1.5)]
    job.refresh_from_db()
    assert job.progress["step"] == 3 and job.progress["total"] == 10
    step = storage.checkpoint_root(job.pk) / "step-3"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(b"x")
    saved = api.post("/api/v1/attempt/checkpoints/", {"step": 3, "path": str(step)}, "json")
    assert saved.status_code == 201, saved.content
    outside = api.post("/api/v1/attempt/checkpoints/", {"step": 4, "path": "/etc"}, "json")
    assert outside.status_code == 400 and "checkpoint directory" in outside.content.decode()


def test_it_opens_nothing_else(running):
    job, plan, other = running
    api = client(plan.token)
    for path in (
        f"/api/v1/jobs/{job.pk}/",
        f"/api/v1/jobs/{other.pk}/",
        f"/api/v1/jobs/{other.pk}/logs/",
        "/api/v1/jobs/",
        "/api/v1/projects/",
        "/api/v1/tokens/",
        "/api/v1/workers/",
    ):
        response = api.get(path)
        assert response.status_code == 403, (path, response.status_code)
        assert "only good for its own job" in response.json()["detail"]
    assert api.post("/api/v1/tokens/", {"name": "x"}, "json").status_code == 403
    assert not Metric.objects.filter(job=other).exists()


def test_bad_reports_get_a_message_and_store_nothing(running):
    job, plan, _ = running
    api = client(plan.token)
    for body in (
        {"step": -1, "values": {"loss": 1}},
        {"step": 1, "values": {}},
        {"step": 1, "values": {"loss": "high"}},
        {"step": 1, "values": {"loss": 1}, "surprise": True},
    ):
        response = api.post("/api/v1/attempt/metrics/", body, "json")
        assert response.status_code == 400, (body, response.content)
    assert not Metric.objects.filter(job=job).exists()


def test_it_expires_with_its_attempt_and_a_users_token_is_not_one(running, cast, api):
    job, plan, _ = running
    lifecycle.finish_node(plan.node_id, plan.claim, 0)
    stale = client(plan.token).post("/api/v1/attempt/metrics/", {"step": 1, "values": {"a": 1}})
    assert stale.status_code == 401 and "no longer running" in stale.json()["detail"]
    assert client("cpat_forged").get("/api/v1/attempt/").status_code == 401
    assert api(cast.bob).get("/api/v1/attempt/").status_code == 403
    assert not Metric.objects.filter(job=job).exists()
