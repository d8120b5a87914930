"""Worker hosts and their GPUs, as each worker registered them.

A worker is online while it heartbeats: one not heard from for ``CP_WORKER_OFFLINE_AFTER``
seconds (30 by default), or that said goodbye, shows as offline.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone


class WorkerQuerySet(models.QuerySet):
    def online(self, now=None) -> WorkerQuerySet:
        now = now or timezone.now()
        cutoff = now - timedelta(seconds=settings.WORKER_OFFLINE_AFTER)
        return self.filter(stopped_at=None, last_heartbeat_at__gte=cutoff)


class Worker(models.Model):
    name = models.CharField(max_length=63, unique=True, help_text="Host name (CP_HOSTNAME).")
    address = models.CharField(max_length=255, blank=True, help_text="Address other hosts reach.")
    queue = models.CharField(max_length=80, help_text="Celery queue this host consumes.")
    node = models.CharField(max_length=200, blank=True, help_text="Celery node name.")
    pid = models.PositiveIntegerField(null=True, blank=True)
    version = models.CharField(max_length=40, blank=True)
    cpu_count = models.PositiveIntegerField(default=0)
    memory_bytes = models.BigIntegerField(default=0)
    cpu_slots = models.PositiveIntegerField(
        default=0, help_text="Processes of CPU-only jobs it runs at once (CP_WORKER_CPU_SLOTS)."
    )
    concurrency = models.PositiveIntegerField(default=1)
    nvml_status = models.CharField(
        max_length=200, blank=True, help_text="'ok', or why NVIDIA GPUs could not be read."
    )
    driver_version = models.CharField(max_length=40, blank=True)
    sandbox = models.CharField(
        max_length=300,
        blank=True,
        help_text="'bwrap', 'off' (CP_SANDBOX=off), or 'unavailable: why' (it runs no work).",
    )
    container_runtime = models.CharField(
        max_length=80, blank=True, help_text="podman or docker (and version), if it has one."
    )
    registered_at = models.DateTimeField(default=timezone.now, editable=False)
    started_at = models.DateTimeField(default=timezone.now)
    last_heartbeat_at = models.DateTimeField(default=timezone.now, db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    suspect_since = models.DateTimeField(
        null=True,
        blank=True,
        help_text="It lost a job's lease: no work is placed on it until it heartbeats again.",
    )

    objects = WorkerQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def is_online_at(self, now) -> bool:
        cutoff = now - timedelta(seconds=settings.WORKER_OFFLINE_AFTER)
        return self.stopped_at is None and self.last_heartbeat_at >= cutoff

    @property
    def is_online(self) -> bool:
        return self.is_online_at(timezone.now())

    @property
    def status(self) -> str:
        return "online" if self.is_online else "offline"


class Gpu(models.Model):
    worker = models.ForeignKey(Worker, on_delete=models.CASCADE, related_name="gpus")
    index = models.PositiveIntegerField()
    uuid = models.CharField(max_length=96, unique=True)
    name = models.CharField(max_length=120)
    memory_total_bytes = models.BigIntegerField(default=0)
    pci_bus_id = models.CharField(max_length=32, blank=True)

    class Meta:
        ordering = ["worker__name", "index"]
        constraints = [
            models.UniqueConstraint(fields=["worker", "index"], name="one_gpu_per_index"),
        ]

    def __str__(self) -> str:
        return f"{self.worker.name}:{self.index} {self.name}"
