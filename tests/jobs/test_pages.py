"""The server-rendered job pages and the websocket that feeds them."""

from __future__ import annotations

import time

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from controlplane.asgi import application
from controlplane.tenancy.services import Actor, create_token
from jobs import outputs
from tests.asyncio_helpers import run

pytestmark = pytest.mark.django_db(transaction=True)
BUILTIN = ["python", "-m", "workers.recipes.causal_lm"]


@pytest.fixture
def job(cast, submit):
    from tests.conftest import add_host

    add_host("cpu-1", cpu_slots=2)
    return submit(name="paged")


def test_the_job_pages_show_only_your_projects_jobs(cast, job):
    bob, dave = Client(), Client()
    bob.force_login(cast.bob)
    dave.force_login(cast.dave)
    listing = bob.get("/jobs/").content.decode()
    assert "paged" in listing and f"/jobs/{job.pk}/" in listing
    page = bob.get(f"/jobs/{job.pk}/").content.decode()
    assert "Job #" in page and "vendor/plotly" in page and "jobs/job.js" in page
    assert dave.get(f"/jobs/{job.pk}/").status_code == 404
    assert "paged" not in dave.get("/jobs/").content.decode()
    assert Client().get(f"/jobs/{job.pk}/").status_code == 302  # to the login page


def test_plotly_is_served_from_the_package(db):
    response = Client().get("/static/vendor/plotly.min.js")
    assert response.status_code == 200
    assert b"plotly" in b"".join(response.streaming_content)[:2000].lower()


def test_the_job_socket_sends_a_snapshot_then_live_events_and_resumes(cast, job):
    _, raw = create_token(Actor.system(), cast.bob, "ws")
    _, stranger = create_token(Actor.system(), cast.dave, "ws")
    outputs.record_logs(job.pk, 1, 0, "first line\n")
    outputs.record_metrics(job.pk, 1, 1, {"loss": 2.0})
    headers = [(b"authorization", f"Bearer {raw}".encode())]

    async def scenario():
        ws = WebsocketCommunicator(application, f"/ws/jobs/{job.pk}/", headers=headers)
        assert (await ws.connect(timeout=5))[0]
        snapshot = await ws.receive_json_from(timeout=5)
        await database_sync_to_async(outputs.record_logs)(job.pk, 1, 0, "second line\n")
        live = await ws.receive_json_from(timeout=5)
        await ws.send_json_to({"type": "resume", "log_since": 0, "metric_since": 0})
        resumed = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        other = WebsocketCommunicator(
            application,
            f"/ws/jobs/{job.pk}/",
            headers=[(b"authorization", f"Bearer {stranger}".encode())],
        )
        refused = await other.connect(timeout=5)
        await other.disconnect()
        return snapshot, live, resumed, refused

    snapshot, live, resumed, refused = run(scenario)
    assert snapshot["type"] == "snapshot" and snapshot["job"]["state"] == "PENDING"
    assert [c["text"] for c in snapshot["logs"]] == ["first line\n"]
    # Points carry their wall time too (the page can draw by step or by time).
    (step, value, at), *_ = snapshot["metrics"]["loss"]
    assert (step, value) == (1, 2.0) and abs(at - time.time()) < 60
    assert list(snapshot["metrics"]) == ["loss"] and snapshot["last_metric"] > 0
    assert live["type"] == "log" and live["text"] == "second line\n" and live["v"] == 1
    assert [c["text"] for c in resumed["logs"]] == ["first line\n", "second line\n"]
    assert refused == (False, 4404)
