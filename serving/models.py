"""The model registry: a Model (a name in a project) and its numbered ModelVersions, each
a Hugging Face directory (config, safetensors weights, tokenizer files) kept under
``CP_STORAGE_DIR/models/<model>/<version>/``."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from controlplane.tenancy.models import Project
from jobs.models import Job


class Model(models.Model):
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="models")
    name = models.SlugField(max_length=100)
    description = models.CharField(max_length=500, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["project__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="model_name_per_project")
        ]

    def __str__(self) -> str:
        return f"{self.project.name}/{self.name}"


class VersionSource(models.TextChoices):
    JOB = "job", "a job's final model"
    CHECKPOINT = "checkpoint", "a job's checkpoint"
    UPLOAD = "upload", "an uploaded archive"
    OUTPUTS = "outputs", "a directory of a job's outputs"


class ModelVersion(models.Model):
    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    source = models.CharField(max_length=16, choices=VersionSource.choices)
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    checkpoint_step = models.PositiveIntegerField(null=True, blank=True)
    path = models.CharField(max_length=500)
    size_bytes = models.BigIntegerField(default=0)
    parameter_count = models.BigIntegerField(default=0)
    model_type = models.CharField(max_length=64, blank=True, help_text="config.json model_type")
    metrics = models.JSONField(default=dict, blank=True)
    notes = models.TextField(blank=True, help_text="What registering it left out, and why.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["model", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["model", "version"], name="version_number_per_model")
        ]

    def __str__(self) -> str:
        return f"{self.model} v{self.version}"


# --- deployments ---------------------------------------------------------------------------


class DeploymentState(models.TextChoices):
    DEPLOYING = "DEPLOYING"  # no replica of it is ready yet
    READY = "READY"  # as many replicas ready as wanted
    UPDATING = "UPDATING"  # scaling, rolling out or replacing a replica; it serves meanwhile
    IDLE = "IDLE"  # scaled to zero: the next request starts a replica
    FAILED = "FAILED"  # its replicas cannot start (the reason says why)
    DELETING = "DELETING"  # draining: in-flight requests finish, then it stops
    DELETED = "DELETED"


DEPLOYMENT_GONE = (DeploymentState.DELETING, DeploymentState.DELETED)


class Deployment(models.Model):
    """A served model version: replicas placed by the scheduler, behind the gateway.

    Its ``name`` is the ``model`` clients send. What the replicas run (model version and
    engine flags) is a ``DeploymentRevision``: changing either makes a new revision, which
    rolls out replica by replica; a canary revision takes ``canary_percent`` of requests.
    """

    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="deployments")
    name = models.SlugField(max_length=63)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revision = models.ForeignKey(
        "DeploymentRevision", null=True, on_delete=models.PROTECT, related_name="+"
    )
    canary = models.ForeignKey(
        "DeploymentRevision", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    canary_percent = models.PositiveSmallIntegerField(default=0)
    canary_replicas = models.PositiveIntegerField(default=1)
    min_replicas = models.PositiveIntegerField(default=1)
    max_replicas = models.PositiveIntegerField(default=1)
    replicas = models.PositiveIntegerField(default=1, help_text="Replicas wanted now.")
    gpus_per_replica = models.PositiveIntegerField(default=0)
    cpus_per_replica = models.PositiveIntegerField(default=1, help_text="CPU slots (gpus 0).")
    priority = models.IntegerField(default=1)
    autoscaling = models.JSONField(
        default=dict, blank=True, help_text="target_ongoing_requests, upscale/downscale delays"
    )
    state = models.CharField(
        max_length=16, choices=DeploymentState.choices, default=DeploymentState.DEPLOYING
    )
    reason = models.CharField(max_length=300, blank=True)
    scaler = models.JSONField(default=dict, blank=True, help_text="The autoscaler's memory.")
    wake_requested_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["project__name", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "name"],
                condition=~models.Q(state="DELETED"),
                name="deployment_name_per_project",
            )
        ]

    def __str__(self) -> str:
        return f"{self.project.name}/{self.name}"

    @property
    def autoscaled(self) -> bool:
        return self.min_replicas != self.max_replicas


class DeploymentRevision(models.Model):
    """What a deployment's replicas run: a model version and the engine's flags."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="revisions")
    number = models.PositiveIntegerField()
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    config = models.JSONField(default=dict, help_text="Engine flags (quantization, batch, ...).")
    broken = models.CharField(
        max_length=300, blank=True, help_text="Why its replicas cannot start (never ready)."
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["deployment", "number"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "number"], name="revision_number_unique")
        ]

    def __str__(self) -> str:
        return f"{self.deployment} rev {self.number}"


class ReplicaState(models.TextChoices):
    PENDING = "PENDING"  # waiting for the scheduler (or restarting after a crash)
    STARTING = "STARTING"  # placed; loading and warming up its model
    READY = "READY"  # serving
    DRAINING = "DRAINING"  # out of the routing table; in-flight requests finish
    STOPPED = "STOPPED"
    FAILED = "FAILED"  # gave up after its restarts


REPLICA_LIVE = (
    ReplicaState.PENDING,
    ReplicaState.STARTING,
    ReplicaState.READY,
    ReplicaState.DRAINING,
)


class Replica(models.Model):
    """One replica of a deployment: a job of kind ``replica`` (the scheduler places it,
    its worker runs ``python -m serving.replica`` in the sandbox, restarts follow the
    job's rules; a lost host's replica comes back elsewhere)."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="replica_set")
    revision = models.ForeignKey(DeploymentRevision, on_delete=models.CASCADE, related_name="+")
    number = models.PositiveIntegerField()
    job = models.OneToOneField(Job, on_delete=models.PROTECT, related_name="replica")
    state = models.CharField(
        max_length=16, choices=ReplicaState.choices, default=ReplicaState.PENDING
    )
    endpoint = models.CharField(max_length=255, blank=True)
    worker_name = models.CharField(max_length=63, blank=True)
    attempt = models.PositiveIntegerField(default=0, help_text="The job attempt last seen.")
    cold_start_seconds = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    ready_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["deployment", "number"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "number"], name="replica_number_unique")
        ]

    def __str__(self) -> str:
        return f"{self.deployment} r{self.number}"


class DeploymentEvent(models.Model):
    """What happened to a deployment, in words (placed, ready, crashed, scaled, rolled)."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    level = models.CharField(max_length=8, default="info")  # info | warning | error
    message = models.CharField(max_length=500)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.deployment}: {self.message}"


class DeploymentSample(models.Model):
    """A deployment's serving figures over one history step (for its page's charts)."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="samples")
    time = models.DateTimeField(db_index=True)
    replicas = models.PositiveIntegerField(default=0, help_text="Ready replicas.")
    values = models.JSONField(default=dict)

    class Meta:
        ordering = ["deployment", "time"]
        indexes = [models.Index(fields=["deployment", "time"], name="deployment_sample_time")]

    def __str__(self) -> str:
        return f"{self.deployment_id}@{self.time:%Y-%m-%d %H:%M:%S}"
