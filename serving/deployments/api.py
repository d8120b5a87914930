"""REST views of deployments: ``/api/v1/deployments/`` and its actions (``promote/``,
``rollback/``, ``events/``, ``samples/``).

The engine flags are plain fields of the deployment (``quantization``, ``max_batch_size``,
...); changing one rolls out a new revision, as does ``version``. ``replicas`` sets a fixed
count, ``min_replicas``/``max_replicas`` an autoscaled range.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from controlplane.schema import body_rules
from controlplane.tenancy.api.base import ProjectScopedViewSet, project_for, scope_to_user
from controlplane.tenancy.api.common import StrictSerializer
from controlplane.tenancy.models import Project
from jobs.states import PRIORITY_BY_NAME, Priority
from serving.deployments import config as flags
from serving.deployments import energy, services, stats
from serving.models import (
    Deployment,
    DeploymentEvent,
    DeploymentRevision,
    DeploymentSample,
    Replica,
)

NAME_HELP = "Unique in its project; clients send it as the request's `model`."


def _flag_field(name: str, flag: flags.Flag) -> serializers.Field:
    """A DRF field with a flag's bounds (its messages are DRF's own)."""
    common: dict[str, Any] = {"required": False, "help_text": flag.help}
    if name == "quantization":
        return serializers.ChoiceField(choices=flags.QUANTIZATION, **common)
    if flag.kind is bool:
        return serializers.BooleanField(**common)
    if flag.nullable:
        common["allow_null"] = True
    cls = serializers.IntegerField if flag.kind is int else serializers.FloatField
    return cls(min_value=flag.low, max_value=flag.high, **common)


def _flag_fields(spec: dict[str, flags.Flag]) -> dict[str, serializers.Field]:
    return {name: _flag_field(name, flag) for name, flag in spec.items()}


class AutoscalingSerializer(StrictSerializer):
    locals().update(_flag_fields(flags.AUTOSCALING))


class CanarySerializer(StrictSerializer):
    version = serializers.IntegerField(
        required=False, min_value=1, help_text="A version of the same model (default: current)."
    )
    percent = serializers.IntegerField(min_value=0, max_value=100, default=10)
    replicas = serializers.IntegerField(min_value=1, max_value=services.MAX_REPLICAS, default=1)
    locals().update(_flag_fields(flags.ENGINE_FLAGS))


@body_rules(exclusive=(("replicas", "min_replicas"), ("replicas", "max_replicas")))
class DeploymentWriteSerializer(StrictSerializer):
    """Fields a client sets on create (all but name/model optional) and PATCH."""

    name = serializers.SlugField(max_length=63, help_text=NAME_HELP)
    project = serializers.SlugRelatedField(
        slug_field="name", queryset=Project.objects.all(), required=False
    )
    model = serializers.CharField(max_length=100, help_text="A registered model's name.")
    version = serializers.IntegerField(min_value=1, required=False, help_text="Default: latest.")
    replicas = serializers.IntegerField(
        min_value=1,
        max_value=services.MAX_REPLICAS,
        required=False,
        error_messages={
            "min_value": "A fixed count must be at least 1; for scale to zero set "
            "min_replicas 0 and max_replicas."
        },
    )
    min_replicas = serializers.IntegerField(
        min_value=0, max_value=services.MAX_REPLICAS, required=False
    )
    max_replicas = serializers.IntegerField(
        min_value=1, max_value=services.MAX_REPLICAS, required=False
    )
    priority = serializers.ChoiceField(
        choices=list(PRIORITY_BY_NAME),
        required=False,
        help_text="As a job's: high preempts normal and low training jobs to place a replica.",
    )
    autoscaling = AutoscalingSerializer(required=False)
    canary = CanarySerializer(required=False, allow_null=True)
    locals().update(_flag_fields(flags.RESOURCE_FLAGS))
    locals().update(_flag_fields(flags.ENGINE_FLAGS))

    def validate(self, attrs: dict) -> dict:
        if "replicas" in attrs and ({"min_replicas", "max_replicas"} & set(attrs)):
            raise serializers.ValidationError(
                {"replicas": ["Give replicas (a fixed count) or min/max_replicas, not both."]}
            )
        if attrs.get("replicas") == 0:
            raise serializers.ValidationError(
                {
                    "replicas": [
                        "A fixed count must be at least 1; for scale to zero set "
                        "min_replicas 0 and max_replicas."
                    ]
                }
            )
        return attrs


@body_rules(exclusive=(("replicas", "min_replicas"), ("replicas", "max_replicas")))
class DeploymentCreateSerializer(DeploymentWriteSerializer):
    """A new deployment: a canary comes later (PATCH), once it runs."""

    canary = None


def _config_of(data: dict) -> dict[str, Any]:
    names = {**flags.ENGINE_FLAGS, **flags.RESOURCE_FLAGS}
    return {k: v for k, v in data.items() if k in names}


def _revision(rev: DeploymentRevision | None) -> dict | None:
    if rev is None:
        return None
    version = rev.model_version
    return {
        "number": rev.number,
        "model": version.model.name,
        "version": version.version,
        "config": rev.config,
        "broken": rev.broken,
        "created_at": rev.created_at.isoformat(),
    }


class ReplicaSerializer(serializers.ModelSerializer):
    revision = serializers.IntegerField(source="revision.number", read_only=True)
    job = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = Replica
        fields = [
            "number",
            "state",
            "revision",
            "job",
            "endpoint",
            "worker_name",
            "attempt",
            "cold_start_seconds",
            "created_at",
            "ready_at",
            "stopped_at",
        ]


class DeploymentSerializer(serializers.ModelSerializer):
    project = serializers.CharField(source="project.name", read_only=True)
    model = serializers.SerializerMethodField()
    version = serializers.SerializerMethodField()
    revision = serializers.SerializerMethodField()
    canary = serializers.SerializerMethodField()
    config = serializers.SerializerMethodField()
    replica_set = serializers.SerializerMethodField()
    stats = serializers.SerializerMethodField()
    energy = serializers.SerializerMethodField(
        help_text="Energy (GPU) or CPU-seconds per 1,000 generated tokens over every replica "
        "it has had; in a single deployment's response only (null in lists)."
    )
    priority = serializers.SerializerMethodField()

    class Meta:
        model = Deployment
        fields = [
            "id", "name", "project", "model", "version", "state", "reason",
            "replicas", "min_replicas", "max_replicas", "gpus_per_replica", "cpus_per_replica",
            "priority", "autoscaling", "config", "revision", "canary", "replica_set", "stats",
            "energy", "created_at", "updated_at",
        ]  # fmt: skip
        read_only_fields = fields

    def get_priority(self, obj: Deployment) -> str:
        return Priority(obj.priority).label

    def get_model(self, obj: Deployment) -> str:
        return obj.revision.model_version.model.name if obj.revision else ""

    def get_version(self, obj: Deployment) -> int | None:
        return obj.revision.model_version.version if obj.revision else None

    def get_revision(self, obj: Deployment) -> dict | None:
        return _revision(obj.revision)

    def get_canary(self, obj: Deployment) -> dict | None:
        rev = _revision(obj.canary)
        if rev is None:
            return None
        return {**rev, "percent": obj.canary_percent, "replicas": obj.canary_replicas}

    def get_config(self, obj: Deployment) -> dict:
        return obj.revision.config if obj.revision else {}

    def get_replica_set(self, obj: Deployment) -> list[dict]:
        live = [r for r in obj.replica_set.all() if r.stopped_at is None]
        return ReplicaSerializer(sorted(live, key=lambda r: r.number), many=True).data

    def get_stats(self, obj: Deployment) -> dict:
        figures = stats.cached(obj.pk)
        figures.pop("totals", None)
        return figures

    def get_energy(self, obj: Deployment) -> dict | None:
        if not self.context.get("energy"):
            return None
        tokens = (stats.cached(obj.pk).get("totals") or {}).get("tokens", 0.0)
        return energy.energy(obj.pk, tokens)


class EventSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeploymentEvent
        fields = ["id", "created_at", "level", "message"]


class SampleSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeploymentSample
        fields = ["time", "replicas", "values"]


def queryset() -> Any:
    return (
        Deployment.objects.exclude(state="DELETED")
        .select_related("project", "revision__model_version__model", "canary__model_version__model")
        .prefetch_related("replica_set__revision")
        .order_by("-id")
    )


def snapshot(deployment_id: int) -> dict:
    """What a deployment's page starts from (the websocket's first frame)."""
    dep = queryset().get(pk=deployment_id)
    events = dep.events.order_by("-id")[:50]
    return {
        "deployment": DeploymentSerializer(dep, context={"energy": True}).data,
        "events": EventSerializer(reversed(list(events)), many=True).data,
    }


class DeploymentViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    ProjectScopedViewSet,
):
    """Serving deployments of your projects: replicas of a registered model version behind
    the gateway at ``/v1/``, placed by the scheduler like jobs."""

    queryset = Deployment.objects.none()  # the real one comes from get_queryset()
    serializer_class = DeploymentSerializer
    filterset_fields = ["name", "project__name", "state"]

    def get_queryset(self) -> Any:
        if getattr(self, "swagger_fake_view", False):
            return Deployment.objects.none()
        return scope_to_user(queryset(), self.request.user, "project")

    def _project(self, project: Project | None) -> Project:
        return project_for(self.request.user, project)

    def _fresh(self, dep: Deployment) -> dict:
        return DeploymentSerializer(queryset().get(pk=dep.pk)).data

    def get_serializer_context(self) -> dict[str, Any]:
        return {**super().get_serializer_context(), "energy": self.action == "retrieve"}

    @extend_schema(request=DeploymentCreateSerializer, responses={201: DeploymentSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        if isinstance(request.data, dict) and "canary" in request.data:
            raise serializers.ValidationError(
                {"canary": ["Create the deployment first, then PATCH a canary."]}
            )
        serializer = DeploymentCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        project = self._project(data.get("project"))
        version = services.resolve_version(project, data["model"], data.get("version"))
        low, high = data.get("min_replicas", 1), data.get("max_replicas")
        if "replicas" in data:
            low = high = data["replicas"]
        dep = services.create_deployment(
            self.actor(),
            project,
            name=data["name"],
            version=version,
            min_replicas=low,
            max_replicas=high if high is not None else max(low, 1),
            priority=PRIORITY_BY_NAME[data.get("priority", "normal")],
            autoscaling=data.get("autoscaling"),
            config=_config_of(data),
        )
        return Response(self._fresh(dep), status=status.HTTP_201_CREATED)

    @extend_schema(request=DeploymentWriteSerializer, responses={200: DeploymentSerializer})
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        dep = self.get_object()
        serializer = DeploymentWriteSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        for fixed in ("name", "project"):
            if fixed in data:
                raise serializers.ValidationError(
                    {fixed: ["This cannot change; create another deployment."]}
                )
        changes: dict[str, Any] = {}
        for key in ("replicas", "min_replicas", "max_replicas", "autoscaling"):
            if key in data:
                changes[key] = data[key]
        if "priority" in data:
            changes["priority"] = PRIORITY_BY_NAME[data["priority"]]
        model = data.get("model") or (dep.revision.model_version.model.name if dep.revision else "")
        if "version" in data or "model" in data:
            changes["version"] = services.resolve_version(dep.project, model, data.get("version"))
        config = _config_of(data)
        if config:
            changes["config"] = config
        if "canary" in data:
            canary = data["canary"]
            if canary is not None:
                canary = dict(canary)
                number = canary.pop("version", None)
                canary["version"] = (
                    services.resolve_version(dep.project, model, number) if number else None
                )
                canary["config"] = _config_of(canary)
                keep = ("version", "percent", "replicas", "config")
                canary = {k: v for k, v in canary.items() if k in keep}
            changes["canary"] = canary
        dep = services.update_deployment(self.actor(), dep, **changes)
        return Response(self._fresh(dep))

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Drain and stop: it leaves the gateway at once, requests in flight finish."""
        dep = services.delete_deployment(self.actor(), self.get_object())
        return Response(DeploymentSerializer(dep).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={200: DeploymentSerializer})
    @action(detail=True, methods=["post"])
    def promote(self, request: Request, pk: str | None = None) -> Response:
        """The canary becomes the deployment's revision and takes every request."""
        dep = services.promote_canary(self.actor(), self.get_object())
        return Response(self._fresh(dep))

    @extend_schema(request=None, responses={200: DeploymentSerializer})
    @action(detail=True, methods=["post"])
    def rollback(self, request: Request, pk: str | None = None) -> Response:
        """Stop the canary; every request goes to the current revision."""
        with transaction.atomic():
            dep = services.rollback_canary(self.actor(), self.get_object())
        return Response(self._fresh(dep))

    @extend_schema(responses={200: EventSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def events(self, request: Request, pk: str | None = None) -> Response:
        """What happened to it, newest first (replicas placed, ready, crashed, scaled)."""
        dep = self.get_object()
        page = self.paginate_queryset(dep.events.order_by("-id"))
        return self.get_paginated_response(EventSerializer(page, many=True).data)

    @extend_schema(responses={200: SampleSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def samples(self, request: Request, pk: str | None = None) -> Response:
        """Its serving figures over time (requests/s, tokens/s, latency percentiles)."""
        dep = self.get_object()
        rows = list(dep.samples.order_by("-time")[:2000])[::-1]
        return Response(SampleSerializer(rows, many=True).data)
