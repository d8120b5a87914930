"""REST views of sweeps: list/submit/detail, their trials (sortable by the metric), cancel.
Thin: every change is in jobs.sweeps.services."""

from __future__ import annotations

from typing import Any

from django.db.models import F, QuerySet
from django_filters import rest_framework as filters
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from controlplane.tenancy.api.base import ProjectScopedViewSet
from controlplane.tenancy.api.common import LimitedJSONParser
from controlplane.tenancy.models import Role
from jobs.api.views import CodeUploadParser
from jobs.spec import parse_spec_text
from jobs.sweeps import services
from jobs.sweeps.models import Sweep, SweepState, Trial, TrialState


class TrialSerializer(serializers.ModelSerializer):
    job_state = serializers.CharField(source="job.state")
    progress = serializers.SerializerMethodField()

    class Meta:
        model = Trial
        fields = ["number", "job", "job_state", "state", "reason", "hparams", "metric",
                  "metric_step", "rungs", "progress"]  # fmt: skip

    def get_progress(self, trial: Trial) -> dict:
        progress = trial.job.progress or {}
        return {"step": progress.get("step"), "total": progress.get("total")}


class SweepSerializer(serializers.ModelSerializer):
    project = serializers.CharField(source="project.name")
    user = serializers.CharField(source="created_by.username", default=None)
    metric = serializers.CharField()
    goal = serializers.CharField()
    counts = serializers.SerializerMethodField(help_text="Trials by state.")
    best = serializers.SerializerMethodField(help_text="The best trial so far.")

    class Meta:
        model = Sweep
        fields = ["id", "name", "project", "user", "state", "reason", "metric", "goal",
                  "total", "counts", "best", "created_at", "finished_at"]  # fmt: skip

    def get_counts(self, sweep: Sweep) -> dict[str, int]:
        counts = dict.fromkeys(TrialState.values, 0)
        for state in sweep.trials.values_list("state", flat=True):
            counts[state] += 1
        return counts

    def get_best(self, sweep: Sweep) -> dict | None:
        best = services.best_trial(sweep)
        return TrialSerializer(best).data if best else None


class SweepDetailSerializer(SweepSerializer):
    class Meta(SweepSerializer.Meta):
        fields = [*SweepSerializer.Meta.fields, "search", "job_spec"]


class SweepFilter(filters.FilterSet):
    state = filters.MultipleChoiceFilter(choices=SweepState.choices)
    project = filters.CharFilter(field_name="project__name")

    class Meta:
        model = Sweep
        fields = ["state", "project"]


class TrialsQuery(serializers.Serializer):
    ordering = serializers.ChoiceField(
        choices=["number", "-number", "metric", "-metric", "state"], default="number"
    )
    state = serializers.ChoiceField(choices=TrialState.choices, required=False)


class SweepViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    ProjectScopedViewSet,
):
    """Hyperparameter sweeps of your projects. Submit a sweep file as JSON, or as multipart
    with a ``sweep`` (YAML or JSON) and a ``code`` archive every trial runs."""

    queryset = Sweep.objects.select_related("project", "created_by")
    serializer_class = SweepSerializer
    parser_classes = [LimitedJSONParser, CodeUploadParser]
    filterset_class = SweepFilter
    ordering_fields = ["id", "created_at", "state"]
    required_roles = {"cancel": Role.MEMBER}

    def get_serializer_class(self) -> type:
        return SweepDetailSerializer if self.action == "retrieve" else SweepSerializer

    @extend_schema(
        request={
            "application/json": services.SweepSpecSerializer,
            "multipart/form-data": {
                "type": "object",
                "properties": {
                    "sweep": {
                        "type": "string",
                        "minLength": 1,
                        "description": "The sweep file, YAML or JSON.",
                    },
                    "code": {"type": "string", "format": "binary"},
                },
                "required": ["sweep"],
            },
        },
        responses={201: SweepDetailSerializer},
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        code = None
        if request.content_type.startswith("multipart/"):
            unknown = set(request.data) - {"sweep", "code"}
            if unknown:
                raise serializers.ValidationError(
                    {name: ["Unknown field: send 'sweep' and 'code'."] for name in unknown}
                )
            text = request.data.get("sweep")
            if not isinstance(text, str) or not text.strip():
                raise serializers.ValidationError({"sweep": ["Send the sweep file (YAML/JSON)."]})
            data = parse_spec_text(text)
            code = request.FILES.get("code")
        else:
            data = request.data
        sweep = services.create_sweep(
            self.actor(), data, code=code.file if code else None, code_size=code.size if code else 0
        )
        return Response(SweepDetailSerializer(sweep).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=SweepDetailSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        sweep = services.cancel_sweep(self.actor(), self.get_object())
        return Response(SweepDetailSerializer(sweep).data)

    @extend_schema(
        parameters=[
            OpenApiParameter("ordering", str, description="number, -number, metric, -metric"),
            OpenApiParameter("state", str, description="only trials in this state"),
        ],
        responses=TrialSerializer(many=True),
    )
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])
    def trials(self, request: Request, pk: str | None = None) -> Response:
        sweep = self.get_object()
        query = TrialsQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        trials = ordered(sweep.trials.select_related("job"), query.validated_data["ordering"])
        if state := query.validated_data.get("state"):
            trials = trials.filter(state=state)
        return Response(TrialSerializer(trials, many=True).data)


def ordered(trials: QuerySet, ordering: str) -> QuerySet:
    """By number, or by metric with the trials that have none last."""
    if ordering.endswith("metric"):
        key = (
            F("metric").desc(nulls_last=True)
            if ordering[0] == "-"
            else F("metric").asc(nulls_last=True)
        )
        return trials.order_by(key, "number")
    return trials.order_by(ordering, "number") if ordering != "number" else trials
