"""Training jobs: the Job, its Attempts (one per placement), each attempt's per-node
runs, the GPU/CPU-slot reservations that make placement exclusive, and what a job
produces: checkpoints, metrics and log chunks.

Invariants the database itself enforces: a GPU (or CPU slot) is reserved by at most one
attempt, and a job has at most one live attempt.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

from controlplane.cluster.models import Worker
from controlplane.tenancy.models import Project
from jobs import signals
from jobs.states import (
    JOB_TERMINAL,
    AttemptState,
    JobKind,
    JobState,
    Priority,
    StopReason,
    check_transition,
)


class Job(models.Model):
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="jobs")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=JobKind.choices, default=JobKind.TRAINING)
    tags = models.CharField(
        max_length=600, blank=True, help_text="The spec's tags as ',a,b,' (see spec.encode_tags)."
    )
    spec = models.JSONField(help_text="The validated spec, as submitted (normalized).")
    entrypoint = models.JSONField(help_text="argv list")
    args = models.JSONField(default=list)
    env = models.JSONField(default=dict)
    code_dir = models.CharField(
        max_length=500, blank=True, help_text="Uploaded or allowlisted code; empty: built-in."
    )
    nodes = models.PositiveIntegerField(default=1)
    gpus_per_node = models.PositiveIntegerField(default=0)
    procs_per_node = models.PositiveIntegerField(default=1)
    priority = models.IntegerField(choices=Priority.choices, default=Priority.NORMAL)
    max_restarts = models.PositiveIntegerField(default=3)
    max_runtime = models.PositiveIntegerField(null=True, blank=True, help_text="seconds")
    checkpoint_keep = models.PositiveIntegerField(default=3)
    image = models.CharField(
        max_length=255, blank=True, help_text="Container image (spec environment.image), if any."
    )
    mounts = models.JSONField(
        default=list,
        blank=True,
        help_text="Server paths its processes may read (a model version's directory); set by "
        "the control plane, never by a spec.",
    )
    not_before = models.DateTimeField(
        null=True, blank=True, help_text="A restarting job waits until then (backoff)."
    )

    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.PENDING)
    reason = models.CharField(max_length=300, blank=True, help_text="Why it waits or failed.")
    restarts = models.PositiveIntegerField(default=0, help_text="Failures retried so far.")
    preemptions = models.PositiveIntegerField(default=0)
    exit_code = models.IntegerField(null=True, blank=True)
    progress = models.JSONField(default=dict, blank=True, help_text="Latest step and metrics.")
    model_path = models.CharField(
        max_length=500, blank=True, help_text="A finished HF model the job offered the registry."
    )
    model_metrics = models.JSONField(default=dict, blank=True)
    log_bytes = models.BigIntegerField(default=0)
    log_truncated = models.BooleanField(default=False)
    outputs_bytes = models.BigIntegerField(
        default=0, help_text="Bytes its outputs take (counted against the storage quota)."
    )

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["state", "-priority", "id"], name="job_queue"),
            models.Index(fields=["project", "state"], name="job_project_state"),
            # A scheduling pass reads each project's pending jobs of one shape in chunks
            # (jobs/queues.py): only pending rows, in the order the pass walks them.
            models.Index(
                fields=["project", "priority", "gpus_per_node", "nodes", "id"],
                condition=models.Q(state="PENDING"),
                name="job_pending_shape",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.name}"

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def is_terminal(self) -> bool:
        return self.state in JOB_TERMINAL

    @property
    def tag_list(self) -> list[str]:
        return [t for t in self.tags.split(",") if t]

    def move_to(self, state: str, **fields) -> list[str]:
        """Set the state (guarded) and fields; returns the names to ``save(update_fields=)``."""
        check_transition(self.state, state)
        old, self.state = self.state, state
        for name, value in fields.items():
            setattr(self, name, value)
        if old != state:  # told after the commit that saves it (never if it rolls back)
            job_id, preempted = self.pk, "preemptions" in fields
            transaction.on_commit(
                lambda: signals.job_transitioned.send(
                    sender=Job, job_id=job_id, old=old, new=state, preempted=preempted
                )
            )
        return ["state", *fields, "updated_at"]


class Attempt(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    state = models.CharField(
        max_length=16, choices=AttemptState.choices, default=AttemptState.SCHEDULED
    )
    stop_requested = models.CharField(
        max_length=16, choices=StopReason.choices, blank=True, help_text="Set: its nodes stop."
    )
    reason = models.CharField(max_length=300, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    master_addr = models.CharField(max_length=255, blank=True)
    master_port = models.PositiveIntegerField(null=True, blank=True)
    resume_from = models.CharField(max_length=500, blank=True)
    environment = models.JSONField(
        default=dict,
        blank=True,
        help_text="What its processes ran in: venv key and packages, or image; the sandbox.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job", "number"]
        constraints = [
            models.UniqueConstraint(fields=["job", "number"], name="attempt_number_unique"),
            models.UniqueConstraint(
                fields=["job"],
                # A fixed order (not the frozenset's), so migrations stay stable.
                condition=Q(state__in=[AttemptState.SCHEDULED.value, AttemptState.RUNNING.value]),
                name="one_live_attempt_per_job",
            ),
        ]

    def __str__(self) -> str:
        return f"job #{self.job_id} attempt {self.number}"


class NodeState(models.TextChoices):
    WAITING = "WAITING"  # start message sent, not claimed yet
    RUNNING = "RUNNING"  # claimed by its worker, processes started
    EXITED = "EXITED"


class AttemptNode(models.Model):
    """One node of an attempt: which host runs it, with which GPUs, and its lease."""

    attempt = models.ForeignKey(Attempt, on_delete=models.CASCADE, related_name="nodes")
    rank = models.PositiveIntegerField()
    worker = models.ForeignKey(Worker, null=True, on_delete=models.SET_NULL, related_name="+")
    worker_name = models.CharField(max_length=63)
    gpu_indices = models.JSONField(default=list)
    cpu_slots = models.PositiveIntegerField(default=0)
    state = models.CharField(max_length=16, choices=NodeState.choices, default=NodeState.WAITING)
    claim = models.CharField(max_length=32, blank=True, help_text="Fencing token of its run.")
    token_digest = models.CharField(
        max_length=64, blank=True, editable=False, help_text="SHA-256 of CP_ATTEMPT_TOKEN."
    )
    pid = models.PositiveIntegerField(null=True, blank=True, help_text="The guard's pid.")
    pids = models.JSONField(
        default=list, blank=True, help_text="The job's processes on this host (for telemetry)."
    )
    endpoint = models.CharField(
        max_length=255, blank=True, help_text="Where a service workload answers, once ready."
    )
    service_key = models.CharField(
        max_length=64, blank=True, editable=False, help_text="The key its callers must send."
    )
    ready_at = models.DateTimeField(null=True, blank=True)
    ready_info = models.JSONField(default=dict, blank=True)
    sent_at = models.DateTimeField(
        null=True, blank=True, help_text="When its start message was last sent."
    )
    claimed_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    exit_code = models.IntegerField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["attempt", "rank"]
        constraints = [
            models.UniqueConstraint(fields=["attempt", "rank"], name="node_rank_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.attempt} node {self.rank} on {self.worker_name}"


class Reservation(models.Model):
    """A GPU (``kind=gpu``, its NVML index) or CPU slot held by a live attempt."""

    GPU = "gpu"
    CPU = "cpu"
    worker = models.ForeignKey(Worker, on_delete=models.CASCADE, related_name="reservations")
    kind = models.CharField(max_length=3, choices=[(GPU, "GPU"), (CPU, "CPU slot")])
    index = models.PositiveIntegerField()
    attempt = models.ForeignKey(Attempt, on_delete=models.CASCADE, related_name="reservations")
    node = models.ForeignKey(AttemptNode, on_delete=models.CASCADE, related_name="reservations")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["worker", "kind", "index"], name="one_reservation_per_device"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.worker_id}:{self.kind}{self.index} -> {self.attempt}"


class Checkpoint(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="checkpoints")
    attempt = models.ForeignKey(Attempt, null=True, on_delete=models.SET_NULL, related_name="+")
    step = models.PositiveIntegerField()
    path = models.CharField(max_length=500)
    size_bytes = models.BigIntegerField(default=0)
    metrics = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["job", "-step"]
        constraints = [
            models.UniqueConstraint(fields=["job", "step"], name="one_checkpoint_per_step"),
        ]

    def __str__(self) -> str:
        return f"job #{self.job_id} step {self.step}"


class Metric(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="metrics")
    attempt = models.PositiveIntegerField(default=0)
    step = models.IntegerField()
    name = models.CharField(max_length=100)
    value = models.FloatField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["job", "name", "step"]
        indexes = [models.Index(fields=["job", "name", "step"], name="metric_series")]

    def __str__(self) -> str:
        return f"job #{self.job_id} {self.name}@{self.step}={self.value:g}"


class MetricRollup(models.Model):
    """A job's metric summarized over aligned ranges of steps, kept as reports arrive
    (``jobs.rollups``): ``width`` steps per bucket (``bucket = step // width``) at a few
    widths, and width 0 for the whole series (its count, last step and value). Charts of
    long series and the page's table of values read these instead of every point."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=100)
    width = models.PositiveIntegerField()
    bucket = models.BigIntegerField()
    n = models.BigIntegerField()
    total = models.FloatField()
    first_step = models.IntegerField()
    last_step = models.IntegerField()
    last_value = models.FloatField()
    last_time = models.DateTimeField()
    last_id = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["job", "name", "width", "bucket"], name="metric_rollup_bucket"
            ),
        ]

    def __str__(self) -> str:
        return f"job #{self.job_id} {self.name} /{self.width}[{self.bucket}] n={self.n}"


class LogChunk(models.Model):
    """A slice of a job's output. The id is the cursor: ``?since=<id>`` pages forward."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="log_chunks")
    attempt = models.PositiveIntegerField(default=0)
    node = models.PositiveIntegerField(default=0)
    text = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["job", "id"]
        indexes = [models.Index(fields=["job", "id"], name="log_cursor")]

    def __str__(self) -> str:
        return f"job #{self.job_id} log {self.pk}"
