"""``/api/v1/batch-jobs/``: run a model version over a JSONL of prompts.

``POST`` multipart: ``spec`` (JSON: project, model, version, name, nodes, cpus_per_node,
gpus_per_node, quantization, max_batch_size, max_tokens, temperature, priority,
max_restarts, and optionally ``input_from``) and ``input`` (the JSONL file), or instead of
the file ``input_from`` naming one the control plane holds: ``{"job": N, "path": P}`` (a
file of a job's kept outputs) or ``{"model": M, "version": V, "path": P}`` (a file of a
registered model version). The job itself is an ordinary job (its logs,
attempts and cancel are under ``/api/v1/jobs/{id}/``); ``output/`` downloads the
completions, in input order, as JSONL.
"""

from __future__ import annotations

import json
from typing import Any

from django.http import StreamingHttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from controlplane.tenancy.api.base import ProjectScopedViewSet, project_for
from controlplane.tenancy.api.common import LimitedMultiPartParser, StrictSerializer
from controlplane.tenancy.models import Project
from jobs.models import Job
from jobs.states import PRIORITY_BY_NAME, JobKind
from serving.batch import output, services
from serving.deployments.config import QUANTIZATION
from serving.deployments.services import resolve_version


class BatchUploadParser(LimitedMultiPartParser):
    limit_setting = "BATCH_MAX_INPUT_BYTES"
    what = "inputs"


class InputFromSerializer(StrictSerializer):
    job = serializers.IntegerField(min_value=1, required=False)
    model = serializers.CharField(max_length=100, required=False)
    version = serializers.IntegerField(min_value=1, required=False)
    path = serializers.CharField(max_length=1000)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("job" in attrs) == ("model" in attrs):
            raise serializers.ValidationError(
                "Name one of job (a job's kept outputs) or model (a registered version's "
                'files), e.g. {"job": 12, "path": "outputs/prompts.jsonl"}.'
            )
        if "version" in attrs and "model" not in attrs:
            raise serializers.ValidationError({"version": ["Only with model."]})
        return attrs


class BatchSpecSerializer(StrictSerializer):
    project = serializers.SlugRelatedField(
        slug_field="name", queryset=Project.objects.all(), required=False
    )
    name = serializers.CharField(max_length=100, default="batch")
    model = serializers.CharField(max_length=100)
    version = serializers.IntegerField(min_value=1, required=False)
    nodes = serializers.IntegerField(min_value=1, max_value=64, default=1)
    gpus_per_node = serializers.IntegerField(min_value=0, max_value=64, default=0)
    cpus_per_node = serializers.IntegerField(min_value=1, max_value=256, default=1)
    quantization = serializers.ChoiceField(choices=QUANTIZATION, default="none")
    max_batch_size = serializers.IntegerField(min_value=1, max_value=512, default=16)
    max_tokens = serializers.IntegerField(min_value=1, max_value=131_072, default=64)
    temperature = serializers.FloatField(min_value=0.0, max_value=2.0, default=0.0)
    priority = serializers.ChoiceField(choices=list(PRIORITY_BY_NAME), default="normal")
    max_restarts = serializers.IntegerField(min_value=0, max_value=100, default=3)
    input_from = InputFromSerializer(
        required=False,
        help_text="Read the prompts from a file the control plane holds instead of an upload.",
    )


class BatchJobSerializer(serializers.ModelSerializer):
    project = serializers.CharField(source="project.name", read_only=True)
    rows = serializers.SerializerMethodField()
    rows_written = serializers.SerializerMethodField()
    model = serializers.SerializerMethodField()
    version = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = [
            "id", "name", "project", "state", "reason", "model", "version", "rows",
            "rows_written", "nodes", "progress", "restarts", "preemptions", "created_at",
            "started_at", "finished_at",
        ]  # fmt: skip
        read_only_fields = fields

    def get_rows(self, job: Job) -> int:
        return int(job.spec.get("rows") or 0)

    def get_rows_written(self, job: Job) -> int:
        return services.rows_written(job)

    def get_model(self, job: Job) -> str:
        return str(job.spec.get("model") or "")

    def get_version(self, job: Job) -> int | None:
        return job.spec.get("version")


class BatchJobViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ProjectScopedViewSet):
    """Batch inference jobs of your projects."""

    queryset = Job.objects.filter(kind=JobKind.BATCH).select_related("project").order_by("-id")
    serializer_class = BatchJobSerializer
    parser_classes = [BatchUploadParser]

    @extend_schema(
        request={"multipart/form-data": {"type": "object", "properties": {
            "spec": {"type": "string", "description": "The batch spec, JSON."},
            "input": {"type": "string", "format": "binary",
                      "description": "Prompts, JSONL (or spec.input_from)."}},
            "required": ["spec"]}},
        responses={201: BatchJobSerializer},
    )  # fmt: skip
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        unknown = set(request.data) - {"spec", "input"}
        if unknown:
            raise serializers.ValidationError(
                {
                    name: ["Unknown field: send 'spec' (JSON) and 'input' (JSONL)."]
                    for name in unknown
                }
            )
        try:
            spec = json.loads(request.data.get("spec") or "{}")
        except ValueError as exc:
            raise serializers.ValidationError({"spec": [f"Not JSON: {exc}"]}) from None
        serializer = BatchSpecSerializer(data=spec)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        upload = request.FILES.get("input")
        if upload is None and "input_from" not in data:
            raise serializers.ValidationError(
                {"input": ["Attach the prompts as a JSONL file, or name one in spec.input_from."]}
            )
        if upload is not None and "input_from" in data:
            raise serializers.ValidationError(
                {"input": ["Send the prompts as a file or name them in spec.input_from, not both."]}
            )
        project = project_for(request.user, data.get("project"))
        version = resolve_version(project, data["model"], data.get("version"))
        if upload is not None:
            source = upload.file
        else:
            source = services.open_source(project, data["input_from"])
        with source:
            job = self._create(project, version, source, data)
        return Response(BatchJobSerializer(job).data, status=status.HTTP_201_CREATED)

    def _create(self, project: Project, version: Any, source: Any, data: dict) -> Job:
        return services.create_batch_job(
            self.actor(),
            project,
            version,
            source,
            name=data["name"],
            nodes=data["nodes"],
            gpus_per_node=data["gpus_per_node"],
            cpus_per_node=data["cpus_per_node"],
            quantization=data["quantization"],
            max_batch_size=data["max_batch_size"],
            max_tokens=data["max_tokens"],
            temperature=data["temperature"],
            priority=PRIORITY_BY_NAME[data["priority"]],
            max_restarts=data["max_restarts"],
        )

    @extend_schema(responses={(200, "application/jsonl"): bytes})
    @action(detail=True, methods=["get"])
    def output(self, request: Request, pk: str | None = None) -> Any:
        """The completions written so far (all of them once it succeeded), in input order."""
        job = self.get_object()
        response = StreamingHttpResponse(
            output.merged(services.output_root(job), job.nodes), content_type="application/jsonl"
        )
        response["Content-Disposition"] = f'attachment; filename="batch-{job.pk}.jsonl"'
        return response
