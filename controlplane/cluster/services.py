"""Registration, heartbeat and goodbye of worker hosts: every write to the inventory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict

from django.db import transaction
from django.utils import timezone

from controlplane.cluster.models import Gpu, Worker
from controlplane.tenancy.services import Actor, record


class GpuSpec(TypedDict):
    index: int
    uuid: str
    name: str
    memory_total: int
    pci_bus_id: str


@dataclass
class HostInfo:
    """What a worker reports about its host when it starts."""

    name: str
    queue: str
    address: str = ""
    node: str = ""
    pid: int | None = None
    version: str = ""
    cpu_count: int = 0
    memory_bytes: int = 0
    cpu_slots: int = 0
    concurrency: int = 1
    nvml_status: str = ""
    driver_version: str = ""
    sandbox: str = ""
    container_runtime: str = ""
    gpus: list[GpuSpec] = field(default_factory=list)


@transaction.atomic
def register_worker(info: HostInfo) -> Worker:
    """Create or refresh the host's row and make its GPU list match what it found."""
    now = timezone.now()
    values = {
        "address": info.address,
        "queue": info.queue,
        "node": info.node,
        "pid": info.pid,
        "version": info.version,
        "cpu_count": info.cpu_count,
        "memory_bytes": info.memory_bytes,
        "cpu_slots": info.cpu_slots,
        "concurrency": info.concurrency,
        "nvml_status": info.nvml_status[:200],
        "driver_version": info.driver_version[:40],
        "sandbox": info.sandbox[:300],
        "container_runtime": info.container_runtime[:80],
        "started_at": now,
        "last_heartbeat_at": now,
        "stopped_at": None,
        "suspect_since": None,
    }
    worker, created = Worker.objects.select_for_update().update_or_create(
        name=info.name, defaults=values
    )
    seen = {g["uuid"] for g in info.gpus}
    worker.gpus.exclude(uuid__in=seen).delete()
    # A GPU moved to another host keeps its UUID: free the index it held there first.
    for spec in info.gpus:
        Gpu.objects.filter(worker=worker, index=spec["index"]).exclude(uuid=spec["uuid"]).delete()
        Gpu.objects.update_or_create(
            uuid=spec["uuid"],
            defaults={
                "worker": worker,
                "index": spec["index"],
                "name": spec["name"][:120],
                "memory_total_bytes": spec["memory_total"],
                "pci_bus_id": spec.get("pci_bus_id", "")[:32],
            },
        )
    record(
        Actor.system(),
        "worker.registered" if created else "worker.restarted",
        worker,
        detail={"gpus": len(info.gpus), "address": info.address, "pid": info.pid},
    )
    return worker


def heartbeat(name: str, pid: int | None = None) -> bool:
    """Note that the host is alive (and no longer suspect, if it lost a lease). False when
    its row is gone or another process owns it."""
    now = timezone.now()
    rows = Worker.objects.filter(name=name, stopped_at=None)
    if pid is not None:
        rows = rows.filter(pid=pid)
    return rows.update(last_heartbeat_at=now, suspect_since=None) == 1


def mark_suspect(name: str, when) -> None:
    """The host lost a job's lease (frozen, cut off, or dead): place nothing on it until it
    heartbeats again."""
    Worker.objects.filter(name=name, stopped_at=None).update(suspect_since=when)


@transaction.atomic
def mark_stopped(name: str, pid: int | None = None) -> None:
    """The worker is shutting down cleanly: show it offline at once."""
    rows = Worker.objects.filter(name=name, stopped_at=None)
    if pid is not None:
        rows = rows.filter(pid=pid)
    worker = rows.first()
    if worker is not None and rows.update(stopped_at=timezone.now()) == 1:
        record(Actor.system(), "worker.stopped", worker)
