"""The model registry: a Model (a name in a project) and its numbered ModelVersions, each
a Hugging Face directory (config, safetensors weights, tokenizer files) kept under
``CP_STORAGE_DIR/models/<model>/<version>/``."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from controlplane.tenancy.models import Project
from jobs.models import Job


class Model(models.Model):
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="models")
    name = models.SlugField(max_length=100)
    description = models.CharField(max_length=500, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["project__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="model_name_per_project")
        ]

    def __str__(self) -> str:
        return f"{self.project.name}/{self.name}"


class VersionSource(models.TextChoices):
    JOB = "job", "a job's final model"
    CHECKPOINT = "checkpoint", "a job's checkpoint"
    UPLOAD = "upload", "an uploaded archive"


class ModelVersion(models.Model):
    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    source = models.CharField(max_length=16, choices=VersionSource.choices)
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    checkpoint_step = models.PositiveIntegerField(null=True, blank=True)
    path = models.CharField(max_length=500)
    size_bytes = models.BigIntegerField(default=0)
    parameter_count = models.BigIntegerField(default=0)
    model_type = models.CharField(max_length=64, blank=True, help_text="config.json model_type")
    metrics = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["model", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["model", "version"], name="version_number_per_model")
        ]

    def __str__(self) -> str:
        return f"{self.model} v{self.version}"
