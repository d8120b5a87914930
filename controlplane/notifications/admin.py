"""Webhooks and their delivery log in the admin (read-only: make them through the API or
the project page, which show the signing secret once)."""

from __future__ import annotations

from django.contrib import admin

from controlplane.notifications.models import Delivery, Webhook


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    list_display = ["name", "project", "url", "payload_format", "active", "created_at"]
    list_filter = ["project", "payload_format", "active"]
    readonly_fields = ["project", "name", "url", "events", "payload_format", "created_by",
                       "created_at"]  # fmt: skip
    fields = [*readonly_fields, "active"]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ["id", "webhook", "event", "state", "attempts", "response_status",
                    "created_at", "delivered_at"]  # fmt: skip
    list_filter = ["state", "event"]
    readonly_fields = [f.name for f in Delivery._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
