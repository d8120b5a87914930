"""The telemetry REST API (history ranges, a job's energy, bad input, project scoping)
and /metrics (dcgm-exporter names and labels, cp_ metrics, who may scrape)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from controlplane.cluster.models import Gpu
from monitoring import services
from monitoring.agent import TelemetryAgent
from monitoring.exporter import DCGM
from monitoring.models import JobUsage
from tests.monitoring.helpers import host, running_job

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.fixture
def history(cast):
    worker = host("hist-host", gpus=1)
    job = running_job(cast.alpha, worker, gpus=[0], pids=[], name="alpha-run")
    gpu = Gpu.objects.get(worker=worker, index=0)
    rows = [
        {"uuid": gpu.uuid, "index": 0, "t": T0 + timedelta(seconds=10 * k), "step": 10, "n": 10,
         "util_mean": float(k), "util_max": float(k) + 1, "power_mean": 100.0, "energy_j": 1000.0,
         "job_id": job.pk, "project_id": cast.alpha.pk}
        for k in range(60)
    ]  # fmt: skip
    services.record_history(
        worker.pk, {"gpus": rows, "host": {"t": T0, "step": 10, "n": 10, "cpu_mean": 12.5}}
    )
    return worker, gpu, job


def test_gpu_history_is_served_at_the_step_asked_for(history, cast, api):
    _, gpu, job = history
    start = T0.timestamp()
    response = api(cast.bob).get(
        f"/api/v1/gpus/{gpu.pk}/telemetry/", {"from": start, "to": start + 600, "step": 60}
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["step"] == 60 and body["gpu"]["uuid"] == gpu.uuid
    points = body["points"]
    assert len(points) == 10 and points[0]["t"] == start
    assert points[0]["util_mean"] == pytest.approx(2.5) and points[0]["util_max"] == 6.0
    assert points[0]["energy_j"] == 6000.0 and points[0]["job"] == job.pk


def test_history_of_another_projects_job_hides_the_job(history, cast, api):
    _, gpu, _ = history
    start = T0.timestamp()
    body = (
        api(cast.dave)
        .get(f"/api/v1/gpus/{gpu.pk}/telemetry/", {"from": start, "to": start + 600})
        .json()
    )
    assert body["points"] and all(p["job"] is None and p["hidden"] for p in body["points"])
    assert body["points"][0]["util_mean"] is not None  # the GPU itself is shared inventory


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"from": "yesterday"}, "from"),
        ({"to": "nan"}, "to"),
        ({"from": "2026-11-20T12:00:00Z", "to": "2026-11-20T11:00:00Z"}, "from"),
        ({"step": "0"}, "step"),
        ({"step": "ten"}, "step"),
        ({"from": "0", "to": "86400", "step": "1"}, "step"),
        ({"bogus": "1"}, "bogus"),
    ],
)
def test_bad_ranges_get_a_400_naming_the_field(history, cast, api, query, field):
    _, gpu, _ = history
    response = api(cast.bob).get(f"/api/v1/gpus/{gpu.pk}/telemetry/", query)
    assert response.status_code == 400 and field in response.json(), response.content


def test_host_history_and_unknown_objects(history, cast, api):
    worker, _, _ = history
    client = api(cast.bob)
    start = T0.timestamp()
    body = client.get(
        f"/api/v1/workers/{worker.pk}/telemetry/", {"from": start, "to": start + 60}
    ).json()
    assert body["points"][0]["cpu_mean"] == 12.5
    assert client.get("/api/v1/gpus/999999/telemetry/").status_code == 404
    assert client.get("/api/v1/workers/999999/telemetry/").status_code == 404
    assert api().get(f"/api/v1/workers/{worker.pk}/telemetry/").status_code == 401


def test_a_jobs_energy_is_its_projects_business(history, cast, api):
    _, _, job = history
    from jobs.models import Job

    JobUsage.objects.create(
        job=job, worker_name="hist-host", joules=7200.0, gpu_seconds=60, util_seconds=3000,
        first_seen=T0, last_seen=T0,
    )  # fmt: skip
    Job.objects.filter(pk=job.pk).update(state="SUCCEEDED")
    mine = api(cast.carol).get(f"/api/v1/jobs/{job.pk}/telemetry/")
    assert mine.status_code == 200
    usage = mine.json()["usage"]
    assert usage["joules"] == 7200.0 and usage["kwh"] == pytest.approx(0.002)
    assert usage["util_mean"] == 50.0 and mine.json()["state"] == "SUCCEEDED"
    assert api(cast.dave).get(f"/api/v1/jobs/{job.pk}/telemetry/").status_code == 404


def test_cluster_history_averages_each_host_in_the_database(history, cast, api):
    worker, _, _ = history
    cpu_only = host("hist-cpu", gpus=0)
    services.record_history(
        cpu_only.pk,
        {"gpus": [], "host": {"t": T0 + timedelta(seconds=20), "step": 10, "n": 5,
                              "cpu_mean": 40.0}},
    )  # fmt: skip
    services.record_history(
        cpu_only.pk,
        {"gpus": [], "host": {"t": T0 + timedelta(seconds=30), "step": 10, "n": 15,
                              "cpu_mean": 80.0}},
    )  # fmt: skip
    start = T0.timestamp()
    response = api(cast.dave).get(
        "/api/v1/telemetry/history/", {"from": start, "to": start + 600, "step": 60}
    )
    assert response.status_code == 200, response.content
    hosts = {h["name"]: h for h in response.json()["hosts"]}
    gpu_host = hosts["hist-host"]
    assert gpu_host["kind"] == "GPU" and gpu_host["id"] == worker.pk
    assert [p[0] for p in gpu_host["points"]] == [start + 60 * k for k in range(10)]
    assert gpu_host["points"][0][1] == pytest.approx(2.5)  # mean of 0..5
    assert gpu_host["points"][9][1] == pytest.approx(56.5)  # mean of 54..59
    # A host without a GPU: its CPU, weighted by the samples in each bucket.
    assert hosts["hist-cpu"]["kind"] == "CPU"
    assert hosts["hist-cpu"]["points"] == [[start, pytest.approx(70.0)]]
    bad = api(cast.dave).get("/api/v1/telemetry/history/", {"step": "0"})
    assert bad.status_code == 400 and "step" in bad.json()


def test_a_jobs_gpu_history_over_a_range(history, cast, api):
    _, _, job = history
    start = T0.timestamp()
    response = api(cast.carol).get(
        f"/api/v1/jobs/{job.pk}/telemetry/", {"from": start, "to": start + 300, "step": 100}
    )
    assert response.status_code == 200, response.content
    [gpu] = response.json()["history"]["gpus"]
    assert gpu["host"] == "hist-host" and gpu["index"] == 0
    assert gpu["util"] == [[start, pytest.approx(4.5)], [start + 100, pytest.approx(14.5)],
                           [start + 200, pytest.approx(24.5)]]  # fmt: skip
    assert [p[1] for p in gpu["power"]] == [100.0, 100.0, 100.0]
    assert "history" not in api(cast.carol).get(f"/api/v1/jobs/{job.pk}/telemetry/").json()
    bad = api(cast.carol).get(f"/api/v1/jobs/{job.pk}/telemetry/", {"from": "soon"})
    assert bad.status_code == 400 and "from" in bad.json()
    assert api(cast.dave).get(f"/api/v1/jobs/{job.pk}/telemetry/", {"step": 60}).status_code == 404


def metrics_of(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_metrics_carry_dcgm_names_and_labels_and_cp_metrics(fake_gpus, cast):
    nv = fake_gpus(
        [{"uuid": "GPU-m-0", "pci_bus_id": "00000000:1B:00.0"}, {"unsupported": ["fan"]}]
    )
    worker = host("metrics-host")
    job = running_job(cast.alpha, worker, gpus=[1], pids=[], name="alpha-metrics")
    agent = TelemetryAgent(worker.pk, worker.name, interval=0.1, gateway=nv, persist=False)
    agent.tick()
    agent.tick()  # the second frame reports the first one's cost
    agent.close()
    JobUsage.objects.create(job=job, worker_name="metrics-host", joules=5.0, first_seen=T0,
                            last_seen=T0)  # fmt: skip
    response = Client(REMOTE_ADDR="127.0.0.1").get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    families = metrics_of(response.content.decode())
    for name, *_ in DCGM:
        assert name in families, name
    [util0] = [s for s in families["DCGM_FI_DEV_GPU_UTIL"] if s.labels["gpu"] == "0"]
    assert util0.labels["UUID"] == "GPU-m-0"
    assert util0.labels["pci_bus_id"] == "00000000:1B:00.0" and util0.labels["device"] == "nvidia0"
    assert util0.labels["Hostname"] == "metrics-host" and "job" not in util0.labels
    assert util0.labels["modelName"] == "NVIDIA H100 80GB HBM3 (fake)"
    [util1] = [s for s in families["DCGM_FI_DEV_GPU_UTIL"] if s.labels["gpu"] == "1"]
    assert util1.labels["job"] == str(job.pk) and util1.labels["project"] == "alpha"
    energy = families["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"]
    assert energy[0].name == "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total"  # a counter
    jobs = {s.labels["state"]: s.value for s in families["cp_jobs"]}
    assert jobs["RUNNING"] == 1 and jobs["PENDING"] == 0
    assert families["cp_queue_depth"][0].value == 0
    assert families["cp_job_gpus"][0].labels["job"] == str(job.pk)
    assert families["cp_host_cpu_percent"][0].labels == {"Hostname": "metrics-host"}
    assert 0 < families["cp_telemetry_sample_seconds"][0].value < 1
    assert families["cp_telemetry_agent_cpu_percent"][0].value > 0
    assert {s.labels["Hostname"]: s.value for s in families["cp_worker_up"]} == {"metrics-host": 1}
    assert families["cp_job_energy_joules"][0].value == 5.0
    # Every metric the shipped Grafana dashboard queries is one /metrics exports.
    dashboard = json.loads((ROOT / "monitoring" / "grafana" / "controlplane.json").read_text())
    exprs = json.dumps([t["expr"] for p in dashboard["panels"] for t in p["targets"]])
    queried = set(re.findall(r"\b(?:cp|DCGM)_[A-Za-z_]+", exprs))
    assert queried and queried <= set(families) | {f"{n}_total" for n in families}


def test_metrics_carry_a_row_per_mig_instance(fake_gpus, db):
    nv = fake_gpus([{"mig": 2}, {}])
    worker = host("mig-host")
    agent = TelemetryAgent(worker.pk, worker.name, interval=0.1, gateway=nv, persist=False)
    agent.tick()
    agent.close()
    families = metrics_of(Client(REMOTE_ADDR="127.0.0.1").get("/metrics").content.decode())
    used = families["DCGM_FI_DEV_FB_USED"]
    free = families["DCGM_FI_DEV_FB_FREE"]
    mig_used = {s.labels["GPU_I_ID"]: s for s in used if "GPU_I_ID" in s.labels}
    assert sorted(mig_used) == ["1", "2"]
    assert all(s.labels["gpu"] == "0" and s.labels["GPU_I_PROFILE"] == "1g.10gb"
               for s in mig_used.values())  # fmt: skip
    whole = {s.labels["gpu"]: s.value for s in used if "GPU_I_ID" not in s.labels}
    assert sorted(whole) == ["0", "1"]  # the parents keep their own rows
    assert all(0 < s.value <= 80 * 1024 / 7 for s in mig_used.values())
    mig_free = [s for s in free if "GPU_I_ID" in s.labels]
    assert len(mig_free) == 2 and all(s.value >= 0 for s in mig_free)


def test_metrics_from_another_host_need_the_scrape_token(db, settings):
    settings.METRICS_TOKEN = ""
    remote = Client(REMOTE_ADDR="10.1.2.3")
    refused = remote.get("/metrics")
    assert refused.status_code == 403 and b"CP_METRICS_TOKEN" in refused.content
    settings.METRICS_TOKEN = "scrape-secret-123"
    assert remote.get("/metrics").status_code == 401
    assert remote.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert remote.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret-123").status_code == 200
    settings.METRICS_LOOPBACK_OPEN = False
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 401
