"""The telemetry pages render the latest readings server-side (first paint without
waiting for a websocket), scoped like the streams, and need a signed-in user."""

from __future__ import annotations

import pytest
from django.test import Client

from controlplane.cluster.models import Gpu
from monitoring.agent import TelemetryAgent
from tests.monitoring.helpers import host, running_job

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sampled(fake_gpus, cast):
    nv = fake_gpus([{}, {"unsupported": True}])
    worker = host("page-host")
    running_job(cast.alpha, worker, gpus=[0], pids=[], name="alpha-page-run")
    agent = TelemetryAgent(worker.pk, worker.name, interval=0.1, gateway=nv, persist=False)
    agent.tick()
    agent.close()
    return worker


def browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_cluster_page_shows_every_gpu_with_its_holder_for_members(sampled, cast):
    page = browser(cast.bob).get("/telemetry/").content.decode()
    assert page.count('class="tm-tile') == 2 and "page-host" in page
    assert "job #" in page and "alpha-page-run" in page
    assert "vendor/plotly.min.js" in page and "cdn" not in page.lower()
    other = browser(cast.dave).get("/telemetry/").content.decode()
    assert "alpha-page-run" not in other and "busy · another project" in other
    assert "n/a" in other  # the GPU with no supported field says so


def test_host_and_gpu_pages_render_and_anonymous_users_are_sent_to_log_in(sampled, cast):
    gpu = Gpu.objects.get(worker=sampled, index=0)
    client = browser(cast.carol)
    host_page = client.get(f"/telemetry/hosts/{sampled.pk}/")
    assert host_page.status_code == 200 and b'id="chart-util"' in host_page.content
    gpu_page = client.get(f"/telemetry/gpus/{gpu.pk}/")
    assert gpu_page.status_code == 200 and b'data-field="power_w"' in gpu_page.content
    assert client.get("/telemetry/hosts/999999/").status_code == 404
    assert Client().get("/telemetry/").status_code == 302


def test_the_job_page_has_its_gpu_telemetry_section(sampled, cast):
    from jobs.models import Job

    job = Job.objects.get(name="alpha-page-run")
    page = browser(cast.bob).get(f"/jobs/{job.pk}/").content.decode()
    assert 'id="job-telemetry"' in page and "monitoring/job_telemetry.js" in page


def test_operators_can_read_telemetry_rows_in_the_admin(sampled, cast):
    client = browser(cast.olga)
    for path in ("jobusage", "gpuhistory", "hosthistory"):
        assert client.get(f"/admin/monitoring/{path}/").status_code == 200
    assert client.get("/admin/monitoring/jobusage/add/").status_code == 403
