"""Admin pages for the model registry (versions are registered through the API) and for
deployments: what they run, their replicas and events; scaling and deleting go through
the services (the same checks and audit events as the API)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.http import HttpRequest

from controlplane.tenancy.auth import actor_for
from controlplane.tenancy.errors import ServiceError
from serving.deployments import services as deployments
from serving.models import Deployment, DeploymentEvent, Model, ModelVersion, Replica


class VersionInline(admin.TabularInline):
    model = ModelVersion
    extra = 0
    can_delete = False
    fields = ["version", "source", "job", "parameter_count", "size_bytes", "metrics", "created_at"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin):
    list_display = ["name", "project", "created_by", "created_at"]
    list_filter = ["project"]
    search_fields = ["name", "description"]
    inlines = [VersionInline]


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["__str__", "source", "job", "parameter_count", "size_bytes", "created_at"]
    list_filter = ["source", "model__project"]
    search_fields = ["model__name"]
    readonly_fields = [f.name for f in ModelVersion._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


class ReplicaInline(admin.TabularInline):
    model = Replica
    extra = 0
    can_delete = False
    fields = ["number", "state", "revision", "job", "endpoint", "worker_name", "attempt",
              "cold_start_seconds", "ready_at", "stopped_at"]  # fmt: skip
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class EventInline(admin.TabularInline):
    model = DeploymentEvent
    extra = 0
    can_delete = False
    fields = ["created_at", "level", "message"]
    readonly_fields = fields
    ordering = ["-id"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ["name", "project", "state", "replicas", "min_replicas", "max_replicas",
                    "revision", "canary", "priority", "created_at"]  # fmt: skip
    list_filter = ["state", "project"]
    search_fields = ["name"]
    readonly_fields = [f.name for f in Deployment._meta.fields]
    inlines = [ReplicaInline, EventInline]
    actions = ["delete_through_service"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # create through the API, cpctl or the Models page

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a plain row delete would leave its replicas running

    @admin.action(description="Drain and delete the selected deployments")
    def delete_through_service(self, request: HttpRequest, queryset: Any) -> None:
        for dep in queryset:
            try:
                deployments.delete_deployment(actor_for(request), dep)
            except ServiceError as exc:
                self.message_user(request, f"{dep.name}: {exc.message}", messages.ERROR)
            else:
                self.message_user(request, f"{dep.name}: draining, then deleted.")
