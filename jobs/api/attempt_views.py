"""The SDK's endpoints, for attempt tokens only (``/api/v1/attempt/``): a running node
reads its own job and reports metrics, progress and checkpoints. Thin: jobs.outputs stores
them, exactly as it stores what the worker reads from the SDK's events file."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import permissions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.tenancy.api.common import StrictSerializer
from jobs import outputs, storage
from jobs.attempt_auth import AttemptPrincipal


class IsAttempt(permissions.BasePermission):
    message = "These endpoints take an attempt token (CP_ATTEMPT_TOKEN), not a user's."

    def has_permission(self, request: Request, view: object) -> bool:
        return isinstance(request.user, AttemptPrincipal)


class NumbersField(serializers.DictField):
    """Named numbers, at most ``most`` of them."""

    def __init__(self, most: int, **kwargs: object) -> None:
        self.most = most
        super().__init__(child=serializers.FloatField(), **kwargs)

    def to_internal_value(self, data: object) -> dict:
        if isinstance(data, dict) and len(data) > self.most:
            raise serializers.ValidationError(f"At most {self.most} values.")
        return super().to_internal_value(data)


class MetricsReport(StrictSerializer):
    step = serializers.IntegerField(min_value=0, max_value=2**62)
    total = serializers.IntegerField(min_value=1, max_value=2**62, required=False)
    kind = serializers.RegexField(r"^[a-z][a-z0-9_]{0,31}$", default="train")
    values = NumbersField(200, allow_empty=False)


class CheckpointReport(StrictSerializer):
    step = serializers.IntegerField(min_value=0, max_value=2**62)
    path = serializers.CharField(max_length=500)
    metrics = NumbersField(50, default=dict)


class AttemptView(APIView):
    # The default authenticators (attempt tokens first): a user gets a 403 that says why.
    permission_classes = [IsAttempt]

    @extend_schema(
        summary="The calling attempt's own job (attempt tokens only)",
        responses={200: OpenApiTypes.OBJECT},
    )
    def get(self, request: Request) -> Response:
        node = request.user.node
        attempt, job = node.attempt, node.attempt.job
        return Response(
            {
                "job": job.pk,
                "name": job.name,
                "spec": job.spec,
                "attempt": attempt.number,
                "node_rank": node.rank,
                "state": attempt.state,
                "stop_requested": attempt.stop_requested,
                "resume_from": attempt.resume_from,
                "checkpoint_dir": str(storage.checkpoint_root(job.pk)),
            }
        )


class AttemptMetricsView(AttemptView):
    @extend_schema(
        summary="Report metrics and progress (attempt tokens only)",
        request=MetricsReport,
        responses={201: OpenApiTypes.OBJECT},
    )
    def post(self, request: Request) -> Response:
        report = MetricsReport(data=request.data)
        report.is_valid(raise_exception=True)
        data = report.validated_data
        node = request.user.node
        values = data["values"]
        if data["kind"] != "train":
            values = {f"{data['kind']}/{k}": v for k, v in values.items()}
        rows = outputs.record_metrics(
            node.attempt.job_id,
            node.attempt.number,
            data["step"],
            values,
            data.get("total"),
            fence=(node.pk, node.claim),
        )
        return Response({"stored": len(rows)}, status=status.HTTP_201_CREATED)


class AttemptCheckpointsView(AttemptView):
    @extend_schema(
        summary="Report a complete checkpoint (attempt tokens only)",
        request=CheckpointReport,
        responses={201: OpenApiTypes.OBJECT},
    )
    def post(self, request: Request) -> Response:
        report = CheckpointReport(data=request.data)
        report.is_valid(raise_exception=True)
        data = report.validated_data
        node = request.user.node
        checkpoint = outputs.record_checkpoint(
            node.attempt.job_id,
            node.attempt_id,
            data["step"],
            data["path"],
            data["metrics"],
            fence=(node.pk, node.claim),
        )
        if checkpoint is None:
            raise serializers.ValidationError(
                {"path": ["Not a checkpoint in this job's checkpoint directory."]}
            )
        return Response({"id": checkpoint.pk, "step": checkpoint.step}, status=201)
