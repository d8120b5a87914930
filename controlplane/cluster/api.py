"""Read-only REST views of the inventory: /api/v1/workers/ and /api/v1/gpus/.

Hosts and GPUs are shared by every project, so any signed-in user may list them (which job
holds a GPU is project data and is shown by the jobs API, scoped).
"""

from __future__ import annotations

from django.utils import timezone
from rest_framework import serializers, viewsets

from controlplane.cluster.models import Gpu, Worker


class GpuSerializer(serializers.ModelSerializer):
    worker = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = Gpu
        fields = ["id", "worker", "index", "uuid", "name", "memory_total_bytes", "pci_bus_id"]


class WorkerSerializer(serializers.ModelSerializer):
    status = serializers.SerializerMethodField()
    gpus = GpuSerializer(many=True, read_only=True)

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
            "gpus",
            "registered_at",
            "started_at",
            "last_heartbeat_at",
            "stopped_at",
        ]

    def get_status(self, obj: Worker) -> str:
        return (
            "online" if obj.is_online_at(self.context.get("now") or timezone.now()) else "offline"
        )


class WorkerViewSet(viewsets.ReadOnlyModelViewSet):
    """Worker hosts with their GPUs; ``status`` is online while the host heartbeats."""

    queryset = Worker.objects.prefetch_related("gpus")
    serializer_class = WorkerSerializer
    filterset_fields = ["name"]
    ordering_fields = ["name", "last_heartbeat_at"]

    def get_serializer_context(self) -> dict:
        return {**super().get_serializer_context(), "now": timezone.now()}


class GpuViewSet(viewsets.ReadOnlyModelViewSet):
    """Every GPU of every registered host."""

    queryset = Gpu.objects.select_related("worker")
    serializer_class = GpuSerializer
    filterset_fields = ["worker__name", "name"]
