"""REST views of project secrets: names for every member, values written by project admins
and never read back (``/api/v1/projects/{id}/secrets/``)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from controlplane.tenancy import secrets
from controlplane.tenancy.api.base import ProjectChildViewSet
from controlplane.tenancy.api.common import StrictSerializer
from controlplane.tenancy.models import ProjectSecret, Role


class SecretSerializer(serializers.ModelSerializer):
    """What anyone in the project sees of a secret: its name and dates, never its value."""

    class Meta:
        model = ProjectSecret
        fields = ["name", "created_at", "updated_at"]
        read_only_fields = fields


class SecretValueSerializer(StrictSerializer):
    value = serializers.CharField(
        write_only=True,
        trim_whitespace=False,
        max_length=secrets.MAX_VALUE_BYTES,
        style={"input_type": "password"},
    )


class SecretWriteSerializer(SecretValueSerializer):
    name = serializers.RegexField(
        secrets.NAME,
        max_length=63,
        error_messages={"invalid": "Letters, digits, '.', '_' or '-', at most 63."},
    )


@extend_schema(parameters=[OpenApiParameter("project_pk", int, OpenApiParameter.PATH)])
class SecretViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    ProjectChildViewSet,
):
    """A project's secrets. A spec refers to one by name (``env: {HF_TOKEN: {secret: hf}}``);
    its value reaches that job's environment only."""

    queryset = ProjectSecret.objects.select_related("project")
    serializer_class = SecretSerializer
    lookup_field = "name"
    lookup_url_kwarg = "name"
    lookup_value_regex = "[^/]+"
    required_roles = {
        "create": Role.ADMIN,
        "update": Role.ADMIN,
        "partial_update": Role.ADMIN,
        "destroy": Role.ADMIN,
    }

    def get_serializer_class(self) -> type:
        if self.action == "create":
            return SecretWriteSerializer
        if self.action in ("update", "partial_update"):
            return SecretValueSerializer
        return SecretSerializer

    @extend_schema(request=SecretWriteSerializer, responses={201: SecretSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        project = self.get_project()
        data = SecretWriteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        secret = secrets.set_secret(
            self.actor(), project, data.validated_data["name"], data.validated_data["value"]
        )
        return Response(SecretSerializer(secret).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=SecretValueSerializer, responses={200: SecretSerializer})
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        secret = self.get_object()
        data = SecretValueSerializer(data=request.data, partial=kwargs.get("partial"))
        data.is_valid(raise_exception=True)
        if "value" in data.validated_data:  # a PATCH may leave it as it is
            secret = secrets.set_secret(
                self.actor(), secret.project, secret.name, data.validated_data["value"]
            )
        return Response(SecretSerializer(secret).data)

    def perform_destroy(self, instance: ProjectSecret) -> None:
        secrets.delete_secret(self.actor(), instance)
