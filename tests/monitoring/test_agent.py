"""The telemetry agent in-process, against the FAKE NVML and the real Redis and database:
its frames, attribution of GPUs and processes to jobs, energy kept with the job, history
written in buckets, the latest store, the channel layer, and its own cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from channels.layers import get_channel_layer

from monitoring import frames, queries, services, store
from monitoring.agent import TelemetryAgent
from monitoring.models import GpuHistory, HostHistory, JobUsage
from tests.asyncio_helpers import run
from tests.monitoring.helpers import finish, host, running_job

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def gpu_process():
    """A real process that the fake NVML sees on GPU 0 (CUDA_VISIBLE_DEVICES=0)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "0"},
    )
    yield proc
    proc.kill()
    proc.wait()


def ticks(agent: TelemetryAgent, n: int, pause: float = 0.02) -> list[dict]:
    out = []
    for _ in range(n):
        out.append(agent.tick())
        time.sleep(pause)
    return out


def test_frames_attribute_gpus_and_processes_and_energy_is_kept_with_the_job(
    fake_gpus, cast, settings, gpu_process
):
    settings.TELEMETRY_HISTORY_STEP = 1
    nv = fake_gpus([{}, {}])
    worker = host("agent-host")
    job = running_job(cast.alpha, worker, gpus=[0], pids=[gpu_process.pid], name="train-a")
    agent = TelemetryAgent(worker.pk, worker.name, interval=0.1, gateway=nv)
    frames_seen = ticks(agent, 3)
    time.sleep(1.05)  # cross a 1 s history bucket
    frames_seen += ticks(agent, 3)
    agent.close()

    frame = frames_seen[-1]
    assert frame["type"] == "sample" and frame["v"] == frames.SCHEMA_VERSION
    assert frame["host"] == {"id": worker.pk, "name": "agent-host"} and frame["nvml"] == "ok"
    gpu0, gpu1 = frame["gpus"]
    assert gpu0["holder"]["id"] == job.pk and gpu0["holder"]["project"] == "alpha"
    assert gpu1["holder"] is None
    [proc] = [p for p in gpu0["processes"] if p["pid"] == gpu_process.pid]
    assert proc["holder"] == ["job", job.pk] and proc["mem"] > 0
    [holder] = frame["holders"]
    assert holder["id"] == job.pk and holder["gpus"] == [0] and holder["pids"] == 1
    assert holder["energy_j"] > 0 and holder["energy_source"] == "counter"
    assert frame["agent"]["ticks"] == 5 and frame["agent"]["sample_ms"] > 0

    # History: bucket rows for both GPUs and the host, labelled with the job.
    rows = list(GpuHistory.objects.filter(uuid=gpu0["uuid"]))
    assert rows and rows[0].job_id == job.pk and rows[0].project_id == cast.alpha.pk
    assert rows[0].util_max >= rows[0].util_mean >= 0 and rows[0].step == 1
    assert GpuHistory.objects.filter(uuid=gpu1["uuid"], job=None).exists()
    assert HostHistory.objects.filter(worker=worker).exists()

    # Energy is kept with the job after it ends.
    usage = JobUsage.objects.get(job=job)
    assert usage.joules == pytest.approx(frames_seen[-1]["holders"][0]["energy_j"], rel=1e-6)
    finish(job)
    summary = queries.job_usage(job.pk)
    assert summary["joules"] > 0 and summary["kwh"] == pytest.approx(summary["joules"] / 3.6e6)
    assert summary["hosts"][0]["worker"] == "agent-host" and summary["gpu_seconds"] > 0


def test_a_restarted_agent_continues_the_jobs_energy(fake_gpus, cast, settings):
    settings.TELEMETRY_HISTORY_STEP = 1
    nv = fake_gpus([{}])
    worker = host("restart-host", gpus=1)
    job = running_job(cast.alpha, worker, gpus=[0], pids=[], name="long")
    first = TelemetryAgent(worker.pk, worker.name, interval=0.1, gateway=nv)
    ticks(first, 3)
    first.close()
    kept = JobUsage.objects.get(job=job).joules
    second = TelemetryAgent(worker.pk, worker.name, interval=0.1, gateway=nv)
    ticks(second, 3)
    second.close()
    assert kept > 0 and JobUsage.objects.get(job=job).joules > kept


def test_samples_reach_the_channel_layer_and_the_latest_store(fake_gpus, cast):
    nv = fake_gpus([{}])
    worker = host("layer-host", gpus=1)
    job = running_job(cast.alpha, worker, gpus=[0], pids=[], name="watched")
    agent = TelemetryAgent(worker.pk, worker.name, interval=0.1, gateway=nv, persist=False)
    layer = get_channel_layer("telemetry")

    async def scenario():
        channel = await layer.new_channel()
        for name in (
            frames.CLUSTER_GROUP,
            frames.host_group(worker.pk),
            frames.group("job", job.pk),
        ):
            await layer.group_add(name, channel)
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, lambda: ticks(agent, 2))
        got = [await asyncio.wait_for(layer.receive(channel), 5) for _ in range(6)]
        return got

    received = run(scenario)
    agent.close()
    kinds = sorted(json.loads(m["text"])["type"] for m in received)
    assert kinds == ["holder_sample"] * 2 + ["sample"] * 4
    job_message = next(m for m in received if json.loads(m["text"])["type"] == "holder_sample")
    assert job_message["projects"] == [cast.alpha.pk]
    latest = store.latest([worker.pk])[worker.pk]
    assert latest["seq"] == 2 and latest["gpus"][0]["holder"]["id"] == job.pk
    assert [e["t"] for e in store.recent(worker.pk)] == sorted(
        e["t"] for e in store.recent(worker.pk)
    )


def test_no_gpu_means_host_metrics_still_flow(fake_gpus, db):
    nv = fake_gpus(None)
    worker = host("cpu-only", gpus=0)
    agent = TelemetryAgent(worker.pk, worker.name, interval=0.1, gateway=nv, persist=False)
    [frame] = ticks(agent, 1)
    agent.close()
    assert frame["gpus"] == [] and frame["nvml"].startswith("no NVIDIA GPU")
    assert frame["host_metrics"]["mem_total"] > 0


def test_old_buckets_roll_up_to_minutes_and_retention_deletes_the_oldest(db, settings):
    from datetime import UTC, datetime, timedelta

    worker = host("history-host", gpus=0)
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    old = now - timedelta(hours=30)
    rows = [
        {"uuid": "GPU-x", "index": 0, "t": old + timedelta(seconds=10 * k), "step": 10, "n": 10,
         "util_mean": float(k), "util_max": float(k + 5), "energy_j": 100.0}
        for k in range(12)
    ]  # fmt: skip
    services.record_history(worker.pk, {"gpus": rows, "host": {"t": old, "step": 10, "n": 1}})
    services.record_history(
        worker.pk, {"gpus": [], "host": {"t": old - timedelta(days=40), "step": 10, "n": 1}}
    )
    assert services.roll_up(now) == 14
    coarse = list(GpuHistory.objects.filter(uuid="GPU-x").order_by("t"))
    assert [r.step for r in coarse] == [60, 60]
    assert coarse[0].util_mean == pytest.approx(2.5) and coarse[0].util_max == 10.0
    assert coarse[0].energy_j == 600.0
    assert services.purge(now) == 1
    assert HostHistory.objects.count() == 1


def test_a_host_that_registers_again_under_a_new_id_is_reported_under_it(
    fake_gpus, cast, settings, monkeypatch
):
    from controlplane.cluster.models import Worker
    from monitoring import agent as telemetry
    from workers.presence import Heartbeat

    settings.HOSTNAME = "rebound-host"
    nv = fake_gpus([{}])
    old = host("rebound-host", gpus=1)
    agent = TelemetryAgent(old.pk, old.name, interval=0.1, gateway=nv, persist=False)
    monkeypatch.setattr(telemetry, "_agent", agent)  # this process's agent, not started
    assert ticks(agent, 1)[0]["host"]["id"] == old.pk
    Worker.objects.filter(pk=old.pk).delete()  # an operator removed the row
    Heartbeat("cp@rebound-host").beat()
    new = Worker.objects.get(name="rebound-host")
    assert new.pk != old.pk
    assert ticks(agent, 1)[0]["host"]["id"] == new.pk
    agent.close()
