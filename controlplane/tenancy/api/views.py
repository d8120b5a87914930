"""REST views for projects, their members, and the caller's API tokens. Thin: they
validate with a serializer and call a service."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from controlplane.tenancy import services
from controlplane.tenancy.api.base import ProjectChildViewSet, ProjectScopedViewSet
from controlplane.tenancy.api.serializers import (
    MembershipSerializer,
    MembershipUpdateSerializer,
    NewTokenSerializer,
    ProjectSerializer,
    ProjectUpdateSerializer,
    TokenSerializer,
)
from controlplane.tenancy.auth import actor_for
from controlplane.tenancy.models import ApiToken, Membership, Project, Role


class ProjectViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    ProjectScopedViewSet,
):
    """Projects you belong to. Operators create them; project admins edit quotas."""

    queryset = Project.objects.all()
    serializer_class = ProjectSerializer
    project_lookup = ""
    required_roles = {"update": Role.ADMIN, "partial_update": Role.ADMIN}
    filterset_fields = ["name"]
    ordering_fields = ["name", "created_at"]

    def get_serializer_class(self) -> type:
        if self.action in ("update", "partial_update"):
            return ProjectUpdateSerializer
        return ProjectSerializer

    def perform_create(self, serializer: ProjectSerializer) -> None:
        serializer.instance = services.create_project(self.actor(), **serializer.validated_data)

    def perform_update(self, serializer: ProjectSerializer) -> None:
        serializer.instance = services.update_project(
            self.actor(), serializer.instance, **serializer.validated_data
        )


@extend_schema(
    parameters=[OpenApiParameter("project_pk", int, OpenApiParameter.PATH)],
)
class MemberViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    ProjectChildViewSet,
):
    """Members of a project and their roles; project admins add, change and remove them."""

    queryset = Membership.objects.select_related("user", "project")
    serializer_class = MembershipSerializer
    lookup_field = "user__username"
    lookup_url_kwarg = "username"
    lookup_value_regex = "[^/]+"
    required_roles = {
        "create": Role.ADMIN,
        "update": Role.ADMIN,
        "partial_update": Role.ADMIN,
        "destroy": Role.ADMIN,
    }

    def get_serializer_class(self) -> type:
        if self.action in ("update", "partial_update"):
            return MembershipUpdateSerializer
        return MembershipSerializer

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        project = self.get_project()
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        membership = services.add_member(
            self.actor(),
            project,
            serializer.validated_data["user"],
            serializer.validated_data["role"],
        )
        return Response(MembershipSerializer(membership).data, status=status.HTTP_201_CREATED)

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        membership = self.get_object()
        serializer = MembershipUpdateSerializer(data=request.data, partial=kwargs.get("partial"))
        serializer.is_valid(raise_exception=True)
        if "role" in serializer.validated_data:  # a PATCH may leave it as it is
            membership = services.change_role(
                self.actor(), membership, serializer.validated_data["role"]
            )
        return Response(MembershipSerializer(membership).data)

    def perform_destroy(self, instance: Membership) -> None:
        services.remove_member(self.actor(), instance)


class TokenViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Your personal API tokens. The secret is in the create response only; DELETE revokes."""

    serializer_class = TokenSerializer
    permission_classes = [permissions.IsAuthenticated]
    ordering_fields = ["created_at", "name"]

    def get_queryset(self) -> Any:
        if getattr(self, "swagger_fake_view", False):
            return ApiToken.objects.none()
        return ApiToken.objects.filter(user=self.request.user)

    @extend_schema(responses={201: NewTokenSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        token, raw = services.create_token(
            actor_for(request),
            request.user,
            serializer.validated_data["name"],
            serializer.validated_data.get("expires_at"),
        )
        data = NewTokenSerializer(token).data
        data["token"] = raw
        return Response(data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: ApiToken) -> None:
        services.revoke_token(actor_for(self.request), instance)
