"""Per-project webhooks and the log of what was delivered to them."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from controlplane.tenancy.models import Project

#: What a webhook can be told (job and sweep state changes; "ping" when an admin tests it).
EVENTS = (
    "job.succeeded", "job.failed", "job.cancelled", "job.preempted",
    "sweep.succeeded", "sweep.failed", "sweep.cancelled",
)  # fmt: skip


class PayloadFormat(models.TextChoices):
    JSON = "json", "JSON (signed)"
    SLACK = "slack", "Slack-compatible ({text: ...}, signed)"


class Webhook(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="webhooks")
    name = models.CharField(max_length=63)
    url = models.URLField(max_length=500)
    events = models.JSONField(default=list, help_text="Which of EVENTS it is sent.")
    payload_format = models.CharField(
        max_length=8, choices=PayloadFormat.choices, default=PayloadFormat.JSON
    )
    #: The signing secret, encrypted under the secrets key (shown once, when made).
    secret_ciphertext = models.BinaryField(editable=False)
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["project__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="webhook_name_per_project")
        ]

    def __str__(self) -> str:
        return f"{self.project.name}/{self.name}"


class DeliveryState(models.TextChoices):
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"  # every try failed


class Delivery(models.Model):
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=32)
    payload = models.JSONField()
    state = models.CharField(
        max_length=16, choices=DeliveryState.choices, default=DeliveryState.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    response_status = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.event} #{self.pk} ({self.state})"
