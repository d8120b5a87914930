"""Projects, memberships with roles, API tokens and the audit log.

Every other app hangs its objects off a ``Project``; what a user may see and do is decided
by their ``Membership`` role in it (viewer < member < admin). Superusers are operators:
they see every project and act as its admin.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class Role(models.TextChoices):
    VIEWER = "viewer", "viewer (read)"
    MEMBER = "member", "member (submit and cancel)"
    ADMIN = "admin", "admin (manage members and quotas)"


ROLE_RANK = {Role.VIEWER: 1, Role.MEMBER: 2, Role.ADMIN: 3}


def role_at_least(role: str | None, needed: str) -> bool:
    """True when ``role`` grants at least what ``needed`` grants."""
    return role is not None and ROLE_RANK[Role(role)] >= ROLE_RANK[Role(needed)]


#: Job priorities (jobs.states.Priority mirrors these; tenancy does not import jobs).
PRIORITY_CHOICES = [(0, "low"), (1, "normal"), (2, "high")]


class Project(models.Model):
    name = models.SlugField(
        max_length=63, unique=True, help_text="Letters, digits, '-' and '_'; unique."
    )
    description = models.CharField(max_length=500, blank=True)
    max_gpus = models.PositiveIntegerField(
        null=True, blank=True, help_text="GPUs this project may use at once; empty: no limit."
    )
    max_concurrent_jobs = models.PositiveIntegerField(
        null=True, blank=True, help_text="Jobs running at once; empty: no limit."
    )
    max_requests_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Gateway requests per minute to this project's deployments; empty: no limit.",
    )
    max_storage_bytes = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Bytes its model versions and checkpoints may take; empty: no limit.",
    )
    max_priority = models.PositiveSmallIntegerField(
        choices=PRIORITY_CHOICES,
        default=1,
        help_text="The highest priority its jobs and deployments may ask for (operators set it).",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["project__name", "user__username"]
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="one_membership_per_user"),
            models.CheckConstraint(
                condition=models.Q(role__in=[r.value for r in Role]), name="membership_role_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.project} ({self.role})"


class TokenState(models.TextChoices):
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"


class ApiToken(models.Model):
    """A personal API token. Only a SHA-256 digest of the secret is stored."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(
        max_length=16, db_index=True, help_text="Public part, to recognise it."
    )
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…) of {self.user}"

    def state_at(self, now) -> TokenState:
        if self.revoked_at is not None:
            return TokenState.REVOKED
        if self.expires_at is not None and self.expires_at <= now:
            return TokenState.EXPIRED
        return TokenState.ACTIVE

    @property
    def state(self) -> TokenState:
        return self.state_at(timezone.now())


class AuditEvent(models.Model):
    """Who did what to which object, when and from where. Written by services only."""

    created_at = models.DateTimeField(default=timezone.now, db_index=True, editable=False)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=150, help_text="Username at the time, or 'system'.")
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    project = models.ForeignKey(
        Project, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    ip = models.GenericIPAddressField(null=True, blank=True)
    via = models.CharField(max_length=16, help_text="api, web, admin, cli or system")
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        when = f"{self.created_at:%Y-%m-%d %H:%M:%S}"
        return f"{when} {self.actor_name} {self.action} {self.object_repr}"


class ProjectSecret(models.Model):
    """A named secret of a project (an HF token, a W&B key...). Write-only: the value is
    stored encrypted with a key kept outside the database (``CP_SECRETS_KEY`` or
    ``var/secrets_key``) and is decrypted only for the environment of the project's jobs."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="secrets")
    name = models.CharField(max_length=63)
    ciphertext = models.BinaryField(editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["project__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="secret_name_per_project")
        ]

    def __str__(self) -> str:
        return f"{self.project.name}/{self.name}"
