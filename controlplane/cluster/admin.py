"""Admin pages for the inventory (read-only: workers write it themselves)."""

from django.contrib import admin
from django.db.models import Count

from controlplane.cluster.models import Gpu, Worker


class GpuInline(admin.TabularInline):
    model = Gpu
    extra = 0
    can_delete = False
    readonly_fields = ["index", "uuid", "name", "memory_total_bytes", "pci_bus_id"]


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    list_display = ["name", "online", "address", "gpu_count", "cpu_count", "last_heartbeat_at"]
    list_filter = ["nvml_status", "version"]
    search_fields = ["name", "address"]
    readonly_fields = [f.name for f in Worker._meta.fields]
    inlines = [GpuInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(gpu_total=Count("gpus"))

    @admin.display(boolean=True)
    def online(self, obj: Worker) -> bool:
        return obj.is_online

    @admin.display(description="GPUs", ordering="gpu_total")
    def gpu_count(self, obj: Worker) -> int:
        return obj.gpu_total

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(Gpu)
class GpuAdmin(admin.ModelAdmin):
    list_display = ["__str__", "worker", "index", "name", "memory_total_bytes", "uuid"]
    list_filter = ["name", "worker"]
    search_fields = ["uuid", "name", "worker__name"]
    readonly_fields = [f.name for f in Gpu._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False
