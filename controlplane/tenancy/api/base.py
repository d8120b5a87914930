"""The one base class every project-owned API object goes through.

``ProjectScopedViewSet`` narrows its queryset to the caller's projects, so an object of a
project the caller is not in is a 404 (its existence is not revealed), and checks the
caller's role in the object's project for each action (viewers read, members write,
admins manage). Subclasses say where the project is (``project_lookup``) and which role an
action needs (``required_roles``).
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.shortcuts import get_object_or_404
from rest_framework import permissions, viewsets
from rest_framework.request import Request

from controlplane.tenancy.auth import actor_for
from controlplane.tenancy.errors import Missing
from controlplane.tenancy.models import Membership, Project, Role, role_at_least
from controlplane.tenancy.services import Actor


def roles_by_project(request: Request) -> dict[int, str]:
    """The caller's role per project id, loaded once per request."""
    cached = getattr(request, "_cp_roles", None)
    if cached is None:
        cached = dict(
            Membership.objects.filter(user=request.user).values_list("project_id", "role")
        )
        request._cp_roles = cached
    return cached


def caller_role(request: Request, project_id: int) -> str | None:
    if request.user.is_superuser:
        return Role.ADMIN
    return roles_by_project(request).get(project_id)


def scope_to_user(queryset: models.QuerySet, user: Any, project_lookup: str) -> models.QuerySet:
    """Narrow ``queryset`` to the objects in projects ``user`` belongs to."""
    if user.is_superuser:
        return queryset
    member_of = Membership.objects.filter(user=user).values("project_id")
    field = f"{project_lookup}_id" if project_lookup else "id"
    return queryset.filter(**{f"{field}__in": member_of})


def project_for(user: Any, project: Project | None) -> Project:
    """The project a request body names (the default one when it names none), if ``user``
    belongs to it; else a 404 naming the field."""
    project = project or get_object_or_404(Project, name="default")
    if not scope_to_user(Project.objects.filter(pk=project.pk), user, "").exists():
        raise Missing(f"No project named {project.name!r} that you belong to.", "project")
    return project


class HasProjectRole(permissions.BasePermission):
    """The caller's role in the object's project meets the action's requirement."""

    message = "Your role in this project does not allow this."

    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        needed = view.role_needed()
        role = caller_role(request, view.project_of(obj).pk)
        if not role_at_least(role, needed):
            self.message = (
                f"This needs the {needed} role in project {view.project_of(obj).name!r}; "
                f"you are {role}."
            )
            return False
        return True


class ProjectScopedViewSet(viewsets.GenericViewSet):
    """Base for every viewset whose objects belong to a project."""

    #: path from the model to its Project ("" when the model is Project)
    project_lookup = "project"
    #: role needed per action; unlisted safe actions need viewer, others member
    required_roles: dict[str, str] = {}
    permission_classes = [permissions.IsAuthenticated, HasProjectRole]

    def get_queryset(self) -> models.QuerySet:
        queryset = super().get_queryset()
        return scope_to_user(queryset, self.request.user, self.project_lookup)

    def role_needed(self) -> str:
        action = self.action or ""
        if action in self.required_roles:
            return self.required_roles[action]
        return Role.VIEWER if self.request.method in permissions.SAFE_METHODS else Role.MEMBER

    def project_of(self, obj: Any) -> Project:
        if not self.project_lookup:
            return obj
        for part in self.project_lookup.split("__"):
            obj = getattr(obj, part)
        return obj

    def actor(self) -> Actor:
        return actor_for(self.request)


class ProjectChildViewSet(ProjectScopedViewSet):
    """Base for objects listed under ``/projects/{project_pk}/...`` (members, secrets):
    the project comes from the URL, and one you are not in answers 404."""

    def get_project(self) -> Project:
        if not hasattr(self, "_project"):
            visible = scope_to_user(Project.objects.all(), self.request.user, "")
            self._project = get_object_or_404(visible, pk=self.kwargs["project_pk"])
        return self._project

    def get_queryset(self) -> models.QuerySet:
        if getattr(self, "swagger_fake_view", False):
            return self.queryset.none()
        return super().get_queryset().filter(project=self.get_project())
