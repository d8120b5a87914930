"""Read serializers of the jobs API (what a job looks like from outside)."""

from __future__ import annotations

from rest_framework import serializers

from jobs import storage
from jobs.models import Attempt, AttemptNode, Checkpoint, Job, LogChunk
from jobs.spec import decode_tags
from jobs.states import JobState, Priority


class NodeSerializer(serializers.ModelSerializer):
    worker = serializers.CharField(source="worker_name")
    gpus = serializers.ListField(source="gpu_indices", child=serializers.IntegerField())

    class Meta:
        model = AttemptNode
        fields = ["rank", "worker", "gpus", "cpu_slots", "state", "exit_code", "lease_expires_at"]


class StoragePathField(serializers.CharField):
    """A path relative to the storage root (``jobs/12/checkpoints/step-7``)."""

    def to_representation(self, value: str) -> str:
        return storage.shown(value)


class AttemptSerializer(serializers.ModelSerializer):
    nodes = NodeSerializer(many=True, read_only=True)
    resume_from = StoragePathField(
        read_only=True, help_text="The checkpoint it resumed from, relative to the storage root."
    )

    class Meta:
        model = Attempt
        fields = [
            "number",
            "state",
            "stop_requested",
            "reason",
            "exit_code",
            "resume_from",
            "environment",
            "created_at",
            "started_at",
            "finished_at",
            "nodes",
        ]


class JobSerializer(serializers.ModelSerializer):
    project = serializers.CharField(source="project.name")
    user = serializers.CharField(source="created_by.username", default=None)
    priority = serializers.SerializerMethodField()
    resources = serializers.SerializerMethodField()
    queue_position = serializers.SerializerMethodField(
        help_text="For a pending job: how many pending jobs go before it."
    )
    tags = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = [
            "id",
            "kind",
            "name",
            "tags",
            "project",
            "user",
            "state",
            "reason",
            "queue_position",
            "priority",
            "resources",
            "entrypoint",
            "args",
            "env",
            "max_restarts",
            "restarts",
            "preemptions",
            "max_runtime",
            "exit_code",
            "progress",
            "log_truncated",
            "created_at",
            "started_at",
            "finished_at",
        ]

    def get_tags(self, job: Job) -> list[str]:
        return decode_tags(job.tags)

    def get_priority(self, job: Job) -> str:
        return Priority(job.priority).label

    def get_resources(self, job: Job) -> dict:
        return {
            "nodes": job.nodes,
            "gpus_per_node": job.gpus_per_node,
            "procs_per_node": job.procs_per_node,
        }

    def get_queue_position(self, job: Job) -> int | None:
        if job.state != JobState.PENDING or not self.context.get("detail"):
            return None
        ahead = Job.objects.filter(state=JobState.PENDING)
        return (
            ahead.filter(priority__gt=job.priority).count()
            + ahead.filter(priority=job.priority, pk__lt=job.pk).count()
        )


class JobDetailSerializer(JobSerializer):
    attempt = serializers.SerializerMethodField(help_text="The latest attempt.")

    class Meta(JobSerializer.Meta):
        fields = [*JobSerializer.Meta.fields, "attempt", "spec", "outputs_bytes"]

    def get_attempt(self, job: Job) -> dict | None:
        attempt = job.attempts.order_by("-number").prefetch_related("nodes").first()
        return AttemptSerializer(attempt).data if attempt else None


class CheckpointSerializer(serializers.ModelSerializer):
    path = StoragePathField(read_only=True, help_text="Relative to the storage root.")

    class Meta:
        model = Checkpoint
        fields = ["id", "step", "path", "size_bytes", "metrics", "created_at"]


class LogChunkSerializer(serializers.ModelSerializer):
    class Meta:
        model = LogChunk
        fields = ["id", "attempt", "node", "text", "created_at"]
