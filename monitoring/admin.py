"""Admin views of telemetry rows (read-only: the agent and the roll-up task write them)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from monitoring.models import GpuHistory, HostHistory, JobUsage


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(JobUsage)
class JobUsageAdmin(ReadOnly):
    list_display = ["job", "worker_name", "joules", "kwh", "gpu_seconds", "energy_source",
                    "last_seen"]  # fmt: skip
    search_fields = ["job__name", "worker_name"]
    list_select_related = ["job"]


@admin.register(GpuHistory)
class GpuHistoryAdmin(ReadOnly):
    list_display = ["uuid", "index", "t", "step", "util_mean", "util_max", "power_mean", "job"]
    list_filter = ["step"]
    search_fields = ["uuid"]
    date_hierarchy = "t"


@admin.register(HostHistory)
class HostHistoryAdmin(ReadOnly):
    list_display = ["worker", "t", "step", "cpu_mean", "cpu_max", "mem_used_mean"]
    list_filter = ["step", "worker"]
    date_hierarchy = "t"
