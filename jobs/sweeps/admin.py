"""Sweeps and their trials in the admin (read-only: a sweep is submitted through the API,
``cpctl sweep submit`` or its controller, and cancelled from its page or the API)."""

from __future__ import annotations

from django.contrib import admin

from jobs.sweeps.models import Sweep, Trial


class TrialInline(admin.TabularInline):
    model = Trial
    fields = ["number", "job", "state", "hparams", "metric", "metric_step", "reason"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Sweep)
class SweepAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "project", "state", "total", "created_by", "created_at"]
    list_filter = ["state", "project"]
    search_fields = ["name"]
    readonly_fields = [f.name for f in Sweep._meta.fields]
    inlines = [TrialInline]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(Trial)
class TrialAdmin(admin.ModelAdmin):
    list_display = ["sweep", "number", "job", "state", "metric", "metric_step"]
    list_filter = ["state"]
    readonly_fields = [f.name for f in Trial._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False
