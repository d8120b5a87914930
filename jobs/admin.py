"""Admin pages for jobs, attempts and checkpoints; cancel and resubmit go through the
services (audited like the API)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.http import HttpRequest

from controlplane.tenancy.auth import actor_for
from controlplane.tenancy.errors import ServiceError
from jobs import services
from jobs.models import Attempt, AttemptNode, Checkpoint, Job


class AttemptInline(admin.TabularInline):
    model = Attempt
    extra = 0
    can_delete = False
    fields = [
        "number",
        "state",
        "stop_requested",
        "exit_code",
        "reason",
        "started_at",
        "finished_at",
    ]
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "name",
        "project",
        "created_by",
        "state",
        "priority",
        "nodes",
        "gpus_per_node",
        "restarts",
        "preemptions",
        "created_at",
    ]
    list_filter = ["state", "priority", "project"]
    search_fields = ["name", "id", "created_by__username"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in Job._meta.fields]
    inlines = [AttemptInline]
    actions = ["cancel", "resubmit"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # submit through the API or cpctl: the spec is validated there

    @admin.action(description="Cancel the selected jobs")
    def cancel(self, request: HttpRequest, queryset: Any) -> None:
        done = 0
        for job in queryset:
            try:
                services.cancel_job(actor_for(request, via="admin"), job)
                done += 1
            except ServiceError as exc:
                messages.warning(request, f"Job #{job.pk}: {exc.message}")
        messages.success(request, f"Cancelling {done} job(s).")

    @admin.action(description="Resubmit (requeue a copy of) the selected jobs")
    def resubmit(self, request: HttpRequest, queryset: Any) -> None:
        copies = [services.resubmit_job(actor_for(request, via="admin"), job) for job in queryset]
        messages.success(request, f"Queued {', '.join(f'#{c.pk}' for c in copies)}.")


class NodeInline(admin.TabularInline):
    model = AttemptNode
    extra = 0
    can_delete = False
    exclude = ["claim", "token_digest"]
    readonly_fields = [
        f.name for f in AttemptNode._meta.fields if f.name not in ("claim", "token_digest")
    ]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Attempt)
class AttemptAdmin(admin.ModelAdmin):
    list_display = ["__str__", "state", "stop_requested", "exit_code", "started_at", "finished_at"]
    list_filter = ["state", "stop_requested"]
    search_fields = ["job__name", "job__id"]
    readonly_fields = [f.name for f in Attempt._meta.fields]
    inlines = [NodeInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Checkpoint)
class CheckpointAdmin(admin.ModelAdmin):
    list_display = ["job", "step", "size_bytes", "path", "created_at"]
    list_filter = ["job__project"]
    search_fields = ["job__name", "job__id", "path"]
    readonly_fields = [f.name for f in Checkpoint._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
