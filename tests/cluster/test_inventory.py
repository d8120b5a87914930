"""Worker registration, heartbeat and the online/offline view of the inventory."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from controlplane.cluster import services
from controlplane.cluster.models import Gpu, Worker
from controlplane.tenancy.models import AuditEvent

pytestmark = pytest.mark.django_db
FAKE_NVML_DIR = str(Path(__file__).resolve().parent.parent / "fake_nvml")


def gpu(index: int, uuid: str, memory: int = 80 * 2**30) -> services.GpuSpec:
    return services.GpuSpec(
        index=index, uuid=uuid, name="NVIDIA H100", memory_total=memory, pci_bus_id=""
    )


def host(name: str = "gpu-1", gpus=()) -> services.HostInfo:
    return services.HostInfo(
        name=name, queue=f"host.{name}", address="10.0.0.5", cpu_count=32, gpus=list(gpus)
    )


def test_a_worker_registers_with_its_gpus(cast, api):
    services.register_worker(host(gpus=[gpu(0, "GPU-a"), gpu(1, "GPU-b")]))
    response = api(cast.carol).get("/api/v1/workers/")
    assert response.status_code == 200
    [worker] = response.json()["results"]
    assert (worker["name"], worker["status"], worker["queue"]) == ("gpu-1", "online", "host.gpu-1")
    assert [(g["index"], g["uuid"]) for g in worker["gpus"]] == [(0, "GPU-a"), (1, "GPU-b")]
    assert AuditEvent.objects.filter(action="worker.registered", object_repr="gpu-1").exists()


def test_registering_again_makes_the_gpu_list_match_the_host(db):
    services.register_worker(host(gpus=[gpu(0, "GPU-a"), gpu(1, "GPU-b")]))
    services.register_worker(host(gpus=[gpu(0, "GPU-b"), gpu(1, "GPU-c")]))
    assert list(Gpu.objects.values_list("index", "uuid")) == [(0, "GPU-b"), (1, "GPU-c")]
    assert Worker.objects.count() == 1
    # A GPU moved to another host follows its UUID.
    services.register_worker(host("gpu-2", gpus=[gpu(0, "GPU-c")]))
    assert Gpu.objects.get(uuid="GPU-c").worker.name == "gpu-2"


def test_a_silent_worker_shows_offline_after_the_timeout(cast, api, settings):
    settings.WORKER_OFFLINE_AFTER = 30
    services.register_worker(host())
    Worker.objects.update(last_heartbeat_at=timezone.now() - timedelta(seconds=31))
    client = api(cast.carol)
    assert client.get("/api/v1/workers/").json()["results"][0]["status"] == "offline"
    assert services.heartbeat("gpu-1") is True
    assert client.get("/api/v1/workers/").json()["results"][0]["status"] == "online"
    assert list(Worker.objects.online().values_list("name", flat=True)) == ["gpu-1"]


def test_a_worker_that_says_goodbye_is_offline_at_once(db):
    worker = services.register_worker(host())
    services.mark_stopped("gpu-1", pid=worker.pid)
    assert Worker.objects.online().count() == 0
    assert services.heartbeat("gpu-1") is False  # the heartbeat thread then registers again


def test_the_nvml_gateway_reads_gpus_through_the_fake_library(monkeypatch):
    monkeypatch.syspath_prepend(FAKE_NVML_DIR)
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.setenv("FAKE_NVML_GPUS", '[{"name": "H100 (fake)"}, {"memory_total": 1024}]')
    from monitoring.nvml import Nvml

    gateway = Nvml()
    assert gateway.start() is True
    found = gateway.gpus()
    assert [g["index"] for g in found] == [0, 1]
    assert found[0]["name"] == "H100 (fake)" and found[1]["memory_total"] == 1024
    assert found[0]["pci_bus_id"] == ""  # "Not Supported" reads as empty, not an exception
    import pynvml

    assert getattr(pynvml, "FAKE", False) is True


def test_no_driver_means_no_gpus_and_a_plain_reason(monkeypatch):
    monkeypatch.syspath_prepend(FAKE_NVML_DIR)
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.delenv("FAKE_NVML_GPUS", raising=False)
    from monitoring.nvml import Nvml

    gateway = Nvml()
    assert gateway.start() is False
    assert gateway.gpus() == []
    assert gateway.status == "no NVIDIA GPU: NVML Shared Library Not Found"
