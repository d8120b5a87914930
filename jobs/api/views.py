"""REST views of jobs: list/submit/detail, cancel, resubmit, logs, metrics, attempts,
checkpoints. Thin: validation of the spec and every change live in jobs.services."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django_filters import rest_framework as filters
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from controlplane.tenancy.api.base import ProjectScopedViewSet
from controlplane.tenancy.api.common import LimitedJSONParser, LimitedMultiPartParser
from controlplane.tenancy.models import Role
from jobs import queries, services
from jobs.api.serializers import (
    AttemptSerializer,
    CheckpointSerializer,
    JobDetailSerializer,
    JobSerializer,
    LogChunkSerializer,
)
from jobs.models import Job
from jobs.spec import JobSpecSerializer, encode_tags, parse_spec_text
from jobs.states import JOB_TERMINAL, JobState

MAX_LOG_CHUNKS = 500


class CodeUploadParser(LimitedMultiPartParser):
    """Multipart (``spec`` + a ``code`` archive), refused early when over the upload limit."""

    limit_setting = "JOB_CODE_MAX_BYTES"
    what = "code archives"


class JobFilter(filters.FilterSet):
    state = filters.MultipleChoiceFilter(choices=JobState.choices)
    project = filters.CharFilter(field_name="project__name")
    user = filters.CharFilter(field_name="created_by__username")
    tag = filters.CharFilter(method="with_tag", help_text="Jobs that carry this tag.")

    class Meta:
        model = Job
        fields = ["state", "project", "user", "tag"]

    def with_tag(self, jobs: QuerySet, name: str, value: str) -> QuerySet:
        return jobs.filter(tags__contains=encode_tags([value]))


class LogsQuery(serializers.Serializer):
    since = serializers.IntegerField(min_value=0, default=0)
    limit = serializers.IntegerField(min_value=1, max_value=MAX_LOG_CHUNKS, default=200)


class MetricsQuery(serializers.Serializer):
    name = serializers.ListField(child=serializers.CharField(max_length=100), required=False)
    max_points = serializers.IntegerField(min_value=2, max_value=100_000, default=1000)
    with_time = serializers.BooleanField(
        default=False, help_text="Points as [step, value, unix time] (for charts by wall time)."
    )


#: A job's sub-resources are read whole (logs page by ``since`` themselves): no page
#: numbers and none of the job list's filters.
UNPAGED: dict[str, Any] = {"pagination_class": None, "filter_backends": []}


class JobViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    ProjectScopedViewSet,
):
    """Training jobs of your projects. Submit a spec as JSON, or as multipart with a
    ``spec`` (YAML or JSON) and a ``code`` archive (tar.gz or zip of a working directory)."""

    queryset = Job.objects.select_related("project", "created_by")
    serializer_class = JobSerializer
    parser_classes = [LimitedJSONParser, CodeUploadParser]
    filterset_class = JobFilter
    ordering_fields = ["id", "created_at", "priority", "state"]
    required_roles = {"cancel": Role.MEMBER, "resubmit": Role.MEMBER}

    def get_serializer_class(self) -> type:
        return JobDetailSerializer if self.action == "retrieve" else JobSerializer

    def get_serializer_context(self) -> dict:
        return {**super().get_serializer_context(), "detail": self.action == "retrieve"}

    @extend_schema(
        request={
            "application/json": JobSpecSerializer,
            "multipart/form-data": {
                "type": "object",
                "properties": {
                    "spec": {"type": "string", "description": "The job spec, YAML or JSON."},
                    "code": {
                        "type": "string",
                        "format": "binary",
                        "description": "The working directory, tar.gz or zip.",
                    },
                },
                "required": ["spec"],
            },
        },
        responses={201: JobDetailSerializer},
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        code = None
        if request.content_type.startswith("multipart/"):
            unknown = set(request.data) - {"spec", "code"}
            if unknown:
                raise serializers.ValidationError(
                    {name: ["Unknown field: send 'spec' and 'code'."] for name in unknown}
                )
            spec_text = request.data.get("spec")
            if not isinstance(spec_text, str) or not spec_text.strip():
                raise serializers.ValidationError({"spec": ["Send the job spec (YAML or JSON)."]})
            data = parse_spec_text(spec_text)
            code = request.FILES.get("code")
        else:
            data = request.data
        job = services.submit_job(
            self.actor(), data, code=code.file if code else None, code_size=code.size if code else 0
        )
        body = JobDetailSerializer(job, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=JobDetailSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        job = services.cancel_job(self.actor(), self.get_object())
        return Response(JobDetailSerializer(job, context=self.get_serializer_context()).data)

    @extend_schema(request=None, responses={201: JobDetailSerializer})
    @action(detail=True, methods=["post"])
    def resubmit(self, request: Request, pk: str | None = None) -> Response:
        job = services.resubmit_job(self.actor(), self.get_object())
        body = JobDetailSerializer(job, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[
            OpenApiParameter("since", int, description="Chunks after this id."),
            OpenApiParameter("limit", int),
        ],
        responses=inline_serializer(
            "LogPage",
            {
                "chunks": LogChunkSerializer(many=True),
                "next": serializers.IntegerField(help_text="Pass as `since` for what follows."),
                "state": serializers.CharField(),
                "finished": serializers.BooleanField(),
                "truncated": serializers.BooleanField(help_text="Output past the cap was cut."),
            },
        ),
    )
    @action(detail=True, methods=["get"], **UNPAGED)
    def logs(self, request: Request, pk: str | None = None) -> Response:
        job = self.get_object()
        query = LogsQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        chunks = list(
            job.log_chunks.filter(pk__gt=query.validated_data["since"]).order_by("id")[
                : query.validated_data["limit"]
            ]
        )
        return Response(
            {
                "chunks": LogChunkSerializer(chunks, many=True).data,
                "next": chunks[-1].pk if chunks else query.validated_data["since"],
                "state": job.state,
                "finished": job.state in JOB_TERMINAL,
                "truncated": job.log_truncated,
            }
        )

    @extend_schema(
        parameters=[
            OpenApiParameter("name", str, many=True),
            OpenApiParameter("max_points", int),
            OpenApiParameter("with_time", bool, description="Add each point's unix time."),
        ],
        responses=inline_serializer(
            "MetricSeries",
            {
                "names": serializers.ListField(child=serializers.CharField()),
                "series": serializers.DictField(
                    child=serializers.ListField(
                        child=serializers.ListField(child=serializers.FloatField())
                    ),
                    help_text="Per metric name: its points, [step, value] pairs "
                    "([step, value, unix time] with with_time).",
                ),
            },
        ),
    )
    @action(detail=True, methods=["get"], **UNPAGED)
    def metrics(self, request: Request, pk: str | None = None) -> Response:
        job = self.get_object()
        query = MetricsQuery(
            data={
                "max_points": request.query_params.get("max_points", 1000),
                "with_time": request.query_params.get("with_time", False),
                **(
                    {"name": request.query_params.getlist("name")}
                    if "name" in request.query_params
                    else {}
                ),
            }
        )
        query.is_valid(raise_exception=True)
        series = queries.metric_series(
            job,
            query.validated_data.get("name"),
            query.validated_data["max_points"],
            with_time=query.validated_data["with_time"],
        )
        return Response({"names": queries.metric_names(job), "series": series})

    @extend_schema(responses=AttemptSerializer(many=True))
    @action(detail=True, methods=["get"], **UNPAGED)
    def attempts(self, request: Request, pk: str | None = None) -> Response:
        job = self.get_object()
        rows = job.attempts.prefetch_related("nodes").order_by("number")
        return Response(AttemptSerializer(rows, many=True).data)

    @extend_schema(responses=CheckpointSerializer(many=True))
    @action(detail=True, methods=["get"], **UNPAGED)
    def checkpoints(self, request: Request, pk: str | None = None) -> Response:
        job = self.get_object()
        return Response(CheckpointSerializer(job.checkpoints.order_by("-step"), many=True).data)
