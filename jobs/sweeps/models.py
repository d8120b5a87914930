"""A Sweep (base spec + search) and its Trials, one per job it submitted."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from controlplane.tenancy.models import Project
from jobs.models import Job


class SweepState(models.TextChoices):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"  # every trial ended and at least one ran to its end
    FAILED = "FAILED"  # every trial ended and none ran to its end
    CANCELLED = "CANCELLED"


class TrialState(models.TextChoices):
    LIVE = "LIVE"  # its job is queued or running
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    STOPPED = "STOPPED"  # stopped early by ASHA: a result, not a failure


class Sweep(models.Model):
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="sweeps")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    name = models.CharField(max_length=100)
    job_spec = models.JSONField(help_text="The base job spec each trial starts from.")
    search = models.JSONField(help_text="The validated search (jobs.sweeps.space).")
    state = models.CharField(max_length=16, choices=SweepState.choices, default=SweepState.RUNNING)
    reason = models.CharField(max_length=300, blank=True)
    total = models.PositiveIntegerField(help_text="Trials it runs in all.")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"sweep #{self.pk} {self.name}"

    @property
    def metric(self) -> str:
        return self.search["metric"]

    @property
    def goal(self) -> str:
        return self.search.get("goal", "minimize")


class Trial(models.Model):
    sweep = models.ForeignKey(Sweep, on_delete=models.CASCADE, related_name="trials")
    number = models.PositiveIntegerField(help_text="0-based: the order it was drawn in.")
    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="trial")
    hparams = models.JSONField()
    state = models.CharField(max_length=16, choices=TrialState.choices, default=TrialState.LIVE)
    reason = models.CharField(max_length=300, blank=True)
    metric = models.FloatField(null=True, blank=True, help_text="Its last value of the metric.")
    metric_step = models.IntegerField(null=True, blank=True)
    rungs = models.JSONField(default=dict, blank=True, help_text="rung index -> value there")

    class Meta:
        ordering = ["number"]
        constraints = [
            models.UniqueConstraint(fields=["sweep", "number"], name="trial_number_once"),
        ]
        indexes = [models.Index(fields=["sweep", "state"], name="trial_sweep_state")]

    def __str__(self) -> str:
        return f"trial {self.number} of sweep #{self.sweep_id}"
