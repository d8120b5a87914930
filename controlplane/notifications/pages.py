"""The project page's Webhooks section (project admins): add one (its secret shown once,
on the page after the POST), delete, send a test, and the latest deliveries."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.http import require_POST
from rest_framework.exceptions import APIException

from controlplane import pages
from controlplane.notifications import services
from controlplane.notifications.api import NewWebhookSerializer
from controlplane.notifications.models import EVENTS, Delivery, PayloadFormat
from controlplane.tenancy import secrets
from controlplane.tenancy.api.base import scope_to_user
from controlplane.tenancy.auth import actor_for
from controlplane.tenancy.errors import ServiceError
from controlplane.tenancy.models import Project, Role

NEW_SECRET = "cp-new-webhook"  # noqa: S105 (a session key's name)
SHOWN_FOR = 300


def context(request: HttpRequest, project: Project) -> dict[str, Any]:
    """What the section draws; the new webhook's secret once, right after it was made."""
    created = None
    if request.method == "GET" and (new := request.session.pop(NEW_SECRET, None)):
        if new.get("project") == project.pk:
            created = {"name": new["name"], "secret": secrets.unseal(new["secret"], SHOWN_FOR)}
    return {
        "webhooks": project.webhooks.order_by("name"),
        "deliveries": Delivery.objects.filter(webhook__project=project)
        .select_related("webhook")
        .order_by("-id")[:20],
        "events": EVENTS,
        "formats": PayloadFormat.choices,
        "created": created,
    }


@login_required
@require_POST
def webhooks(request: HttpRequest, project_id: int) -> HttpResponse:
    visible = scope_to_user(Project.objects.all(), request.user, "")
    project = get_object_or_404(visible, pk=project_id)
    if not pages.can(request.user, project.pk, Role.ADMIN):
        raise PermissionDenied("Only the project's admins manage its webhooks.")
    actor = actor_for(request)
    try:
        if request.POST.get("delete"):
            webhook = get_object_or_404(project.webhooks, pk=request.POST["delete"])
            services.delete_webhook(actor, webhook)
            messages.success(request, "Webhook deleted.")
        elif request.POST.get("ping"):
            services.ping(actor, get_object_or_404(project.webhooks, pk=request.POST["ping"]))
            messages.success(request, "A test delivery is on its way (see Deliveries).")
        else:
            data = NewWebhookSerializer(
                data={"name": request.POST.get("name", ""), "url": request.POST.get("url", ""),
                      "events": request.POST.getlist("events"),
                      "payload_format": request.POST.get("payload_format", "json")}
            )  # fmt: skip
            data.is_valid(raise_exception=True)
            webhook, secret = services.create_webhook(actor, project, **data.validated_data)
            request.session[NEW_SECRET] = {"project": project.pk, "name": webhook.name,
                                           "secret": secrets.seal(secret)}  # fmt: skip
    except (APIException, ServiceError) as exc:
        for line in pages.error_lines(exc):
            messages.error(request, f"Webhook: {line}")
    return redirect(reverse("project-page", args=[project.pk]) + "#webhooks")
