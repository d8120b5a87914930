"""Projects and tokens in the browser: a project's members and roles, quotas, secrets'
names, usage over a chosen range (with a chart), and its audit log for project admins;
the user's API tokens (created with the secret shown once, revoked).

Every form goes through the tenancy services with the API's serializers, so the checks,
messages and audit events are the API's."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST
from rest_framework.exceptions import APIException

from controlplane import pages, time_ranges
from controlplane.notifications import pages as notification_pages
from controlplane.tenancy import secrets, services
from controlplane.tenancy.api.base import scope_to_user
from controlplane.tenancy.api.serializers import (
    MembershipSerializer,
    MembershipUpdateSerializer,
    ProjectUpdateSerializer,
    TokenSerializer,
)
from controlplane.tenancy.auth import actor_for
from controlplane.tenancy.errors import Forbidden, ServiceError
from controlplane.tenancy.models import ApiToken, AuditEvent, Project, Role
from controlplane.usage import project_usage
from jobs.models import Job
from jobs.states import JOB_TERMINAL

USAGE_RANGES = ("24h", "7d", "30d", "90d")
QUOTA_FIELDS = ("max_gpus", "max_concurrent_jobs", "max_requests_per_minute", "max_storage_bytes")


def _project(request: HttpRequest, project_id: int) -> Project:
    return get_object_or_404(scope_to_user(Project.objects.all(), request.user, ""), pk=project_id)


def _admin_or_403(request: HttpRequest, project: Project) -> None:
    if not pages.can(request.user, project.pk, Role.ADMIN):
        raise PermissionDenied("Only the project's admins can change its members and quotas.")


def _flash(request: HttpRequest, what: str, exc: APIException | ServiceError) -> None:
    for line in pages.error_lines(exc):
        messages.error(request, f"{what}: {line}")


@login_required
def project_list(request: HttpRequest) -> HttpResponse:
    projects = scope_to_user(Project.objects.order_by("name"), request.user, "")
    active = Job.objects.exclude(state__in=JOB_TERMINAL)
    rows = [
        {"project": p, "role": pages.role_in(request.user, p.pk),
         "members": p.memberships.count(), "active": active.filter(project=p).count()}
        for p in projects
    ]  # fmt: skip
    return render(request, "tenancy/projects.html", {"rows": rows})


@login_required
def project_detail(request: HttpRequest, project_id: int) -> HttpResponse:
    project = _project(request, project_id)
    role = pages.role_in(request.user, project.pk)
    picker = time_ranges.picker(request, USAGE_RANGES, "7d")
    if "range" not in request.GET and request.GET.get("days") in {"1", "7", "30", "90"}:
        key = "24h" if request.GET["days"] == "1" else f"{request.GET['days']}d"  # older links
        picker["current"] = time_ranges.RANGES[key]
    days = picker["current"].days
    is_admin = role == Role.ADMIN
    return render(
        request,
        "tenancy/project.html",
        {"project": project, "role": role, "is_admin": is_admin, "time_range": picker,
         "members": project.memberships.select_related("user").order_by("user__username"),
         "roles": Role.values, "usage": project_usage(project, days),
         "secrets": project.secrets.order_by("name").values_list("name", flat=True),
         "quota_fields": [(f, getattr(project, f)) for f in QUOTA_FIELDS],
         "audit": AuditEvent.objects.filter(project=project).order_by("-id")[:100]
         if is_admin else None,
         "hooks": notification_pages.context(request, project) if is_admin else None},
    )  # fmt: skip


@login_required
@require_POST
def project_members(request: HttpRequest, project_id: int) -> HttpResponse:
    """Add a member (``username``, ``role``), change a role (``change``) or remove one
    (``remove``): one form per action, each the API's."""
    project = _project(request, project_id)
    _admin_or_403(request, project)
    actor = actor_for(request)
    try:
        if request.POST.get("remove"):
            membership = get_object_or_404(
                project.memberships, user__username=request.POST["remove"]
            )
            services.remove_member(actor, membership)
            messages.success(request, f"{request.POST['remove']} is no longer a member.")
        elif request.POST.get("change"):
            membership = get_object_or_404(
                project.memberships, user__username=request.POST["change"]
            )
            serializer = MembershipUpdateSerializer(data={"role": request.POST.get("role")})
            serializer.is_valid(raise_exception=True)
            services.change_role(actor, membership, serializer.validated_data["role"])
            messages.success(
                request, f"{request.POST['change']} is now {serializer.validated_data['role']}."
            )
        else:
            data = {"username": request.POST.get("username", "").strip(),
                    "role": request.POST.get("role") or Role.MEMBER}  # fmt: skip
            serializer = MembershipSerializer(data=data)
            serializer.is_valid(raise_exception=True)
            services.add_member(actor, project, serializer.validated_data["user"],
                                serializer.validated_data["role"])  # fmt: skip
            messages.success(request, f"{data['username']} added as {data['role']}.")
    except Forbidden as exc:
        raise PermissionDenied(exc.message) from None
    except (APIException, ServiceError) as exc:
        _flash(request, "Members", exc)
    return redirect("project-page", project.pk)


def _quota(raw: str) -> Any:
    raw = raw.strip()
    if not raw:
        return None  # empty: no limit
    return int(raw) if raw.lstrip("-").isdigit() else raw


@login_required
@require_POST
def project_quotas(request: HttpRequest, project_id: int) -> HttpResponse:
    project = _project(request, project_id)
    _admin_or_403(request, project)
    data = {f: _quota(request.POST.get(f, "")) for f in QUOTA_FIELDS}
    serializer = ProjectUpdateSerializer(project, data=data, partial=True)
    try:
        serializer.is_valid(raise_exception=True)
        services.update_project(actor_for(request), project, **serializer.validated_data)
    except Forbidden as exc:
        raise PermissionDenied(exc.message) from None
    except (APIException, ServiceError) as exc:
        _flash(request, "Quotas", exc)
    else:
        messages.success(request, "Quotas saved.")
    return redirect("project-page", project.pk)


#: The session key that holds a new token's secret until the page after the POST shows it.
NEW_TOKEN = "cp-new-token"  # noqa: S105 (a session key's name, not a secret)
NEW_TOKEN_SHOWN_FOR = 300  # seconds: a redirect never followed leaves nothing readable


@login_required
def tokens(request: HttpRequest) -> HttpResponse:
    """The user's API tokens. POST creates one and redirects here (a reload does not make
    another); that next answer shows the secret, once: it is popped from the session."""
    errors: list[str] = []
    if request.method == "POST":
        days = request.POST.get("expires_in_days", "").strip()
        data: dict[str, Any] = {"name": request.POST.get("name", "")}
        if days:
            data["expires_in_days"] = int(days) if days.isdigit() else days
        serializer = TokenSerializer(data=data)
        try:
            serializer.is_valid(raise_exception=True)
            valid = serializer.validated_data
            token, raw = services.create_token(
                actor_for(request), request.user, valid["name"], valid.get("expires_at")
            )
            # Sealed: the session is a database row, and only the digest may be kept there.
            request.session[NEW_TOKEN] = {"id": token.pk, "secret": secrets.seal(raw)}
            return redirect("tokens-page")
        except (APIException, ServiceError) as exc:
            errors = pages.error_lines(exc)
    rows = ApiToken.objects.filter(user=request.user).order_by("-created_at")
    created = None
    if request.method == "GET" and (new := request.session.pop(NEW_TOKEN, None)):
        token = rows.filter(pk=new["id"]).first()
        raw = secrets.unseal(new["secret"], max_age=NEW_TOKEN_SHOWN_FOR)
        created = {"token": token, "secret": raw} if token and raw else None
    response = render(
        request,
        "tenancy/tokens.html",
        {"tokens": rows, "created": created, "errors": errors},
        status=400 if errors else 200,
    )
    if created:
        response["Cache-Control"] = "no-store"  # the secret must not be kept by a cache
    return response


@login_required
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    token = get_object_or_404(ApiToken.objects.filter(user=request.user), pk=token_id)
    services.revoke_token(actor_for(request), token)
    messages.success(request, f"Token {token.name} ({token.prefix}…) revoked.")
    return redirect("tokens-page")
