"""Admin pages for tenancy. Changes made here go through the services, so they are
audited like API changes; the audit log itself is read-only."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Count
from django.http import HttpRequest

from controlplane.tenancy import secrets, services
from controlplane.tenancy.auth import actor_for
from controlplane.tenancy.errors import ServiceError
from controlplane.tenancy.models import ApiToken, AuditEvent, Membership, Project, ProjectSecret


def _actor(request: HttpRequest) -> services.Actor:
    return actor_for(request, via="admin")


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    fields = ["user", "role", "created_at"]
    readonly_fields = ["user", "role", "created_at"]
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "members",
        "max_gpus",
        "max_concurrent_jobs",
        "max_priority",
        "created_at",
    ]
    search_fields = ["name", "description"]
    readonly_fields = ["created_by", "created_at", "updated_at"]
    inlines = [MembershipInline]

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).annotate(member_count=Count("memberships"))

    @admin.display(ordering="member_count")
    def members(self, obj: Project) -> int:
        return obj.member_count

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [*self.readonly_fields, "name"] if obj else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: Project, form: Any, change: bool) -> None:
        fields = {f: form.cleaned_data.get(f) for f in services.PROJECT_FIELDS}
        if change:
            original = Project.objects.get(pk=obj.pk)
            services.update_project(_actor(request), original, **fields)
        else:
            created = services.create_project(
                _actor(request), name=form.cleaned_data["name"], **fields
            )
            obj.pk = created.pk


class MembershipForm(forms.ModelForm):
    class Meta:
        model = Membership
        fields = ["project", "user", "role"]

    def clean(self) -> dict:
        data = super().clean()
        if self.instance.pk and data.get("role") and data["role"] != self.instance.role:
            try:
                services.check_role_change(self.instance, data["role"])
            except ServiceError as exc:
                raise forms.ValidationError(exc.message) from None
        return data


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    form = MembershipForm
    list_display = ["user", "project", "role", "created_at"]
    list_filter = ["role", "project"]
    search_fields = ["user__username", "project__name"]
    autocomplete_fields = ["project", "user"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["project", "user"] if obj else []

    def save_model(self, request: HttpRequest, obj: Membership, form: Any, change: bool) -> None:
        if change:
            services.change_role(_actor(request), Membership.objects.get(pk=obj.pk), obj.role)
        else:
            created = services.add_member(_actor(request), obj.project, obj.user, obj.role)
            obj.pk = created.pk

    def delete_model(self, request: HttpRequest, obj: Membership) -> None:
        try:
            services.remove_member(_actor(request), obj)
        except ServiceError as exc:
            messages.error(request, exc.message)

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        for membership in queryset:
            self.delete_model(request, membership)


class SecretForm(forms.ModelForm):
    value = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        max_length=secrets.MAX_VALUE_BYTES,
        strip=False,
        help_text="Write-only: stored encrypted and never shown again. Saving replaces it.",
    )

    class Meta:
        model = ProjectSecret
        fields = ["project", "name"]

    def clean_name(self) -> str:
        try:
            return secrets.check_name(self.cleaned_data["name"])
        except secrets.SecretError as exc:
            raise forms.ValidationError(str(exc)) from None


@admin.register(ProjectSecret)
class ProjectSecretAdmin(admin.ModelAdmin):
    """Names and dates only; a value is written through the form and never read back."""

    form = SecretForm
    list_display = ["name", "project", "created_by", "updated_at"]
    list_filter = ["project"]
    search_fields = ["name", "project__name"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["project", "name", "created_by", "created_at", "updated_at"] if obj else []

    def save_model(self, request: HttpRequest, obj: ProjectSecret, form: Any, change: bool) -> None:
        value = form.cleaned_data["value"]
        saved = secrets.set_secret(_actor(request), obj.project, obj.name, value)
        obj.pk = saved.pk

    def delete_model(self, request: HttpRequest, obj: ProjectSecret) -> None:
        try:
            secrets.delete_secret(_actor(request), obj)
        except ServiceError as exc:
            messages.error(request, exc.message)

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        for secret in queryset:
            self.delete_model(request, secret)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "user", "prefix", "state", "created_at", "expires_at", "last_used_at"]
    list_filter = ["revoked_at", "expires_at"]
    search_fields = ["name", "prefix", "user__username"]
    readonly_fields = [f.name for f in ApiToken._meta.fields if f.name != "digest"]
    exclude = ["digest"]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the secret must be shown once: use the API or `manage.py create_token`

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoke instead; the row stays for the record

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request: HttpRequest, queryset: Any) -> None:
        for token in queryset:
            services.revoke_token(_actor(request), token)
        messages.success(request, f"Revoked {queryset.count()} token(s).")


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "actor_name", "action", "object_repr", "project", "ip", "via"]
    list_filter = ["action", "via", "project"]
    search_fields = ["actor_name", "action", "object_repr", "object_id"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in AuditEvent._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
