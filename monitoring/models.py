"""Telemetry kept in the database: downsampled history of every GPU and host, and each
job's GPU usage and energy (one row per job and host, kept when the job ends).

History rows are buckets: ``step`` seconds starting at ``t`` (10 s as the agent writes
them, 60 s once rolled up after ``CP_TELEMETRY_FINE_HOURS``), holding the mean and max of
the samples in the bucket and the energy used in it. A GPU's rows are keyed by its UUID
(the inventory row may come and go with its host); the job and project that held the GPU
in the bucket are labels for attribution and scoping.
"""

from __future__ import annotations

from django.db import models

from controlplane.cluster.models import Worker
from controlplane.tenancy.models import Project
from jobs.models import Job


class GpuHistory(models.Model):
    uuid = models.CharField(max_length=96)
    worker = models.ForeignKey(Worker, null=True, on_delete=models.SET_NULL, related_name="+")
    index = models.PositiveSmallIntegerField()
    t = models.DateTimeField(help_text="Start of the bucket.")
    step = models.PositiveIntegerField(help_text="Bucket length in seconds.")
    n = models.PositiveIntegerField(default=0, help_text="Samples in the bucket.")
    util_mean = models.FloatField(null=True)
    util_max = models.FloatField(null=True)
    mem_util_mean = models.FloatField(null=True)
    mem_used_mean = models.FloatField(null=True, help_text="bytes")
    mem_used_max = models.BigIntegerField(null=True, help_text="bytes")
    power_mean = models.FloatField(null=True, help_text="W")
    power_max = models.FloatField(null=True, help_text="W")
    temp_mean = models.FloatField(null=True)
    temp_max = models.FloatField(null=True)
    sm_clock_mean = models.FloatField(null=True)
    mem_clock_mean = models.FloatField(null=True)
    energy_j = models.FloatField(null=True, help_text="Energy used in the bucket (J).")
    job = models.ForeignKey(Job, null=True, on_delete=models.SET_NULL, related_name="+")
    project = models.ForeignKey(Project, null=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["uuid", "t"]
        constraints = [
            models.UniqueConstraint(fields=["uuid", "step", "t"], name="one_gpu_bucket"),
        ]
        indexes = [models.Index(fields=["step", "t"], name="gpu_history_age")]

    def __str__(self) -> str:
        return f"{self.uuid} {self.t:%Y-%m-%d %H:%M:%S} +{self.step}s"


class HostHistory(models.Model):
    worker = models.ForeignKey(Worker, on_delete=models.CASCADE, related_name="+")
    t = models.DateTimeField(help_text="Start of the bucket.")
    step = models.PositiveIntegerField(help_text="Bucket length in seconds.")
    n = models.PositiveIntegerField(default=0)
    cpu_mean = models.FloatField(null=True)
    cpu_max = models.FloatField(null=True)
    mem_used_mean = models.FloatField(null=True, help_text="bytes")
    mem_used_max = models.BigIntegerField(null=True, help_text="bytes")
    mem_total = models.BigIntegerField(null=True)
    load1_mean = models.FloatField(null=True)
    net_rx_mean = models.FloatField(null=True, help_text="bytes/s")
    net_tx_mean = models.FloatField(null=True, help_text="bytes/s")
    disk_read_mean = models.FloatField(null=True, help_text="bytes/s")
    disk_write_mean = models.FloatField(null=True, help_text="bytes/s")

    class Meta:
        ordering = ["worker", "t"]
        constraints = [
            models.UniqueConstraint(fields=["worker", "step", "t"], name="one_host_bucket"),
        ]
        indexes = [models.Index(fields=["step", "t"], name="host_history_age")]

    def __str__(self) -> str:
        return f"{self.worker_id} {self.t:%Y-%m-%d %H:%M:%S} +{self.step}s"


class JobUsage(models.Model):
    """What a job used on one host: energy, GPU time, utilization, peaks."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="gpu_usage")
    worker_name = models.CharField(max_length=63)
    joules = models.FloatField(default=0.0)
    energy_source = models.CharField(
        max_length=8,
        default="counter",
        help_text="'counter' (NVML energy counters) or 'power' (power x time where a GPU "
        "has no counter).",
    )
    gpu_seconds = models.FloatField(default=0.0, help_text="Seconds x GPUs held.")
    util_seconds = models.FloatField(default=0.0, help_text="Sum of utilization% x seconds.")
    mem_peak = models.BigIntegerField(default=0, help_text="Peak GPU memory of its processes.")
    power_peak = models.FloatField(default=0.0, help_text="Peak power of its GPUs together (W).")
    cpu_seconds = models.FloatField(default=0.0, help_text="CPU time of its processes here.")
    rss_peak = models.BigIntegerField(default=0)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()

    class Meta:
        ordering = ["job", "worker_name"]
        constraints = [
            models.UniqueConstraint(fields=["job", "worker_name"], name="one_usage_per_job_host"),
        ]

    def __str__(self) -> str:
        return f"job #{self.job_id} on {self.worker_name}: {self.joules:.0f} J"

    @property
    def kwh(self) -> float:
        return self.joules / 3.6e6

    @property
    def util_mean(self) -> float | None:
        return self.util_seconds / self.gpu_seconds if self.gpu_seconds else None
