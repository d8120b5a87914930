"""Read-only REST views of the inventory: /api/v1/workers/ and /api/v1/gpus/.

Hosts and GPUs are shared by every project, so any signed-in user may list them (which job
holds a GPU is project data and is shown by the jobs API, scoped).
"""

from __future__ import annotations

from django.utils import timezone
from rest_framework import serializers, viewsets

from controlplane.cluster import usage
from controlplane.cluster.models import Gpu, Worker


class GpuSerializer(serializers.ModelSerializer):
    worker = serializers.SlugRelatedField(slug_field="name", read_only=True)
    in_use_by = serializers.SerializerMethodField(
        help_text="The job holding this GPU (details only for your projects), or null."
    )

    class Meta:
        model = Gpu
        fields = [
            "id",
            "worker",
            "index",
            "uuid",
            "name",
            "memory_total_bytes",
            "pci_bus_id",
            "in_use_by",
        ]

    def get_in_use_by(self, obj: Gpu) -> dict | None:
        return self.context.get("usage", {}).get((obj.worker_id, "gpu", obj.index))


class WorkerSerializer(serializers.ModelSerializer):
    status = serializers.SerializerMethodField()
    gpus = GpuSerializer(many=True, read_only=True)
    cpu_slots_in_use = serializers.SerializerMethodField(
        help_text="CPU slots held by jobs (details only for your projects)."
    )

    class Meta:
        model = Worker
        fields = [
            "id",
            "name",
            "status",
            "address",
            "queue",
            "cpu_count",
            "memory_bytes",
            "cpu_slots",
            "concurrency",
            "version",
            "nvml_status",
            "driver_version",
            "sandbox",
            "container_runtime",
            "gpus",
            "cpu_slots_in_use",
            "registered_at",
            "started_at",
            "last_heartbeat_at",
            "stopped_at",
        ]

    def get_status(self, obj: Worker) -> str:
        return (
            "online" if obj.is_online_at(self.context.get("now") or timezone.now()) else "offline"
        )

    def get_cpu_slots_in_use(self, obj: Worker) -> list[dict]:
        return [
            {"slot": index, **holder}
            for (worker_id, kind, index), holder in sorted(
                self.context.get("usage", {}).items(), key=lambda item: item[0]
            )
            if worker_id == obj.pk and kind == "cpu"
        ]


class WorkerViewSet(viewsets.ReadOnlyModelViewSet):
    """Worker hosts with their GPUs; ``status`` is online while the host heartbeats."""

    queryset = Worker.objects.prefetch_related("gpus")
    serializer_class = WorkerSerializer
    filterset_fields = ["name"]
    ordering_fields = ["name", "last_heartbeat_at"]

    def get_serializer_context(self) -> dict:
        context = {**super().get_serializer_context(), "now": timezone.now()}
        if getattr(self, "request", None) is not None and self.request.user.is_authenticated:
            context["usage"] = usage.usage_for(
                self.request.user, Worker.objects.values_list("pk", flat=True)
            )
        return context


class GpuViewSet(WorkerViewSet):
    """Every GPU of every registered host, with the job using it."""

    queryset = Gpu.objects.select_related("worker")
    serializer_class = GpuSerializer
    filterset_fields = ["worker__name", "name"]
    ordering_fields = ["worker__name", "index"]
