"""REST views of the model registry: /api/v1/models/ and /api/v1/models/{id}/versions/."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from controlplane.schema import body_rules
from controlplane.tenancy.api.base import ProjectScopedViewSet, project_for, scope_to_user
from controlplane.tenancy.api.common import (
    LimitedJSONParser,
    LimitedMultiPartParser,
    StrictModelSerializer,
    StrictSerializer,
)
from controlplane.tenancy.errors import Missing
from controlplane.tenancy.models import Project, Role
from jobs.models import Checkpoint, Job
from serving import services
from serving.models import Model, ModelVersion


class ModelSerializer(StrictModelSerializer):
    project = serializers.SlugRelatedField(
        slug_field="name", queryset=Project.objects.all(), default=None
    )
    latest_version = serializers.SerializerMethodField()

    class Meta:
        model = Model
        fields = ["id", "name", "project", "description", "latest_version", "created_at"]
        read_only_fields = ["id", "created_at"]
        extra_kwargs = {"name": {"validators": []}}
        # A name taken in the project is the service's 409, not a serializer's 400.
        validators: list = []

    def to_internal_value(self, data: Any) -> Any:
        # DRF reads "" as "not given" for a related field: the schema (and a user) would not.
        if isinstance(data, dict) and data.get("project") == "":
            raise serializers.ValidationError(
                {"project": ["Give a project's name, or leave the field out for 'default'."]}
            )
        return super().to_internal_value(data)

    def get_latest_version(self, obj: Model) -> int | None:
        latest = max((v.version for v in obj.versions.all()), default=None)
        return latest


class ModelUpdateSerializer(StrictSerializer):
    description = serializers.CharField(max_length=500, allow_blank=True)


class VersionSerializer(serializers.ModelSerializer):
    job = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = ModelVersion
        fields = [
            "version",
            "source",
            "job",
            "checkpoint_step",
            "size_bytes",
            "parameter_count",
            "model_type",
            "metrics",
            "notes",
            "created_at",
        ]


@body_rules(one_of=("checkpoint", "job"), exclusive=(("checkpoint", "outputs"),))
class NewVersionSerializer(StrictSerializer):
    checkpoint = serializers.IntegerField(
        required=False, min_value=1, help_text="Register this checkpoint (its id)."
    )
    job = serializers.IntegerField(
        required=False, min_value=1, help_text="Register this job's final model."
    )
    outputs = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=1000,
        help_text="With job: register this directory of its outputs ('' for all of them).",
    )

    def validate(self, attrs: dict) -> dict:
        if len({"checkpoint", "job"} & set(attrs)) != 1:
            raise serializers.ValidationError(
                "Give one of: checkpoint, job (or upload an archive as multipart)."
            )
        if "outputs" in attrs and "job" not in attrs:
            raise serializers.ValidationError({"outputs": ["Name the job whose outputs."]})
        return attrs


class ModelArchiveParser(LimitedMultiPartParser):
    limit_setting = "MODEL_UPLOAD_MAX_BYTES"
    what = "models"


class ModelViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    ProjectScopedViewSet,
):
    """Models of your projects. Versions: ``versions/`` (register from a checkpoint or a
    job, or upload a tar/zip of a Hugging Face directory), ``versions/{n}/download/``."""

    queryset = Model.objects.select_related("project").prefetch_related("versions")
    serializer_class = ModelSerializer
    parser_classes = [LimitedJSONParser]  # multipart only for version uploads (versions/)
    filterset_fields = ["name", "project__name"]
    required_roles = {"update": Role.MEMBER, "partial_update": Role.MEMBER}

    def get_serializer_class(self) -> type:
        if self.action in ("update", "partial_update"):
            return ModelUpdateSerializer
        return ModelSerializer

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = ModelSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        project = project_for(request.user, serializer.validated_data["project"])
        model = services.create_model(
            self.actor(),
            project,
            serializer.validated_data["name"],
            serializer.validated_data.get("description", ""),
        )
        return Response(ModelSerializer(model).data, status=status.HTTP_201_CREATED)

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        model = self.get_object()
        serializer = ModelUpdateSerializer(data=request.data, partial=kwargs.get("partial"))
        serializer.is_valid(raise_exception=True)
        if "description" in serializer.validated_data:  # a PATCH may leave it as it is
            model.description = serializer.validated_data["description"]
            model.save(update_fields=["description"])
        return Response(ModelSerializer(model).data)

    @extend_schema(methods=["GET"], request=None, responses=VersionSerializer(many=True))
    @extend_schema(
        methods=["POST"],
        request={
            "application/json": NewVersionSerializer,
            "multipart/form-data": {
                "type": "object",
                "properties": {"archive": {"type": "string", "format": "binary"}},
                "required": ["archive"],
            },
        },
        responses={201: VersionSerializer},
    )
    @action(
        detail=True,
        methods=["get", "post"],
        url_path="versions",
        pagination_class=None,  # all of a model's versions, newest first
        filter_backends=[],
        parser_classes=[LimitedJSONParser, ModelArchiveParser],
    )
    def versions(self, request: Request, pk: str | None = None) -> Response:
        model = self.get_object()
        if request.method == "GET":
            return Response(VersionSerializer(model.versions.order_by("-version"), many=True).data)
        if request.content_type.startswith("multipart/"):
            archive = request.FILES.get("archive")
            if archive is None or set(request.data) - {"archive"}:
                raise serializers.ValidationError({"archive": ["Send one file field: archive."]})
            version = services.register_upload(self.actor(), model, archive.file, archive.size)
        else:
            serializer = NewVersionSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            jobs = scope_to_user(Job.objects.all(), request.user, "project")
            if "checkpoint" in serializer.validated_data:
                checkpoint = Checkpoint.objects.filter(
                    pk=serializer.validated_data["checkpoint"], job__in=jobs
                ).first()
                if checkpoint is None:
                    raise Missing("No such checkpoint in your projects.", "checkpoint")
                version = services.register_checkpoint(self.actor(), model, checkpoint)
            else:
                job = jobs.filter(pk=serializer.validated_data["job"]).first()
                if job is None:
                    raise Missing("No such job in your projects.", "job")
                if "outputs" in serializer.validated_data:
                    version = services.register_outputs(
                        self.actor(), model, job, serializer.validated_data["outputs"]
                    )
                else:
                    version = services.register_job_model(self.actor(), model, job)
        return Response(VersionSerializer(version).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[OpenApiParameter("version", int, OpenApiParameter.PATH)],
        responses={(200, "application/x-tar"): bytes},
    )
    @action(
        detail=True,
        methods=["get"],
        url_path=r"versions/(?P<version>[0-9]+)/download",
    )
    def download(self, request: Request, pk: str | None = None, version: str = "") -> Any:
        model = self.get_object()
        row = get_object_or_404(model.versions, version=int(version))
        name = f"{model.name}-v{row.version}"
        response = StreamingHttpResponse(
            stream_tar(Path(row.path), name), content_type="application/x-tar"
        )
        response["Content-Disposition"] = f'attachment; filename="{name}.tar"'
        return response


def stream_tar(directory: Path, prefix: str, chunk: int = 1 << 20) -> Iterator[bytes]:
    """An uncompressed tar of ``directory``'s files, streamed (weights do not compress)."""
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        info = tarfile.TarInfo(f"{prefix}/{path.relative_to(directory)}")
        info.size = path.stat().st_size
        info.mtime = int(path.stat().st_mtime)
        info.mode = 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        with open(path, "rb") as handle:
            while data := handle.read(chunk):
                yield data
        remainder = info.size % tarfile.BLOCKSIZE
        if remainder:
            yield b"\0" * (tarfile.BLOCKSIZE - remainder)
    yield b"\0" * (tarfile.BLOCKSIZE * 2)
