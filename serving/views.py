"""Server-rendered serving pages: models (with a Deploy form per version), deployments,
and a deployment's live page (replicas, events, charts, scale/roll out/delete, and a
playground that streams from the gateway with the browser's session).

Every form goes through the same serializer and services as the REST API (the same
checks, messages and audit events) and is CSRF-protected."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from rest_framework.exceptions import APIException, ValidationError

from controlplane.tenancy.api.base import scope_to_user
from controlplane.tenancy.auth import actor_for
from controlplane.tenancy.errors import ServiceError
from controlplane.tenancy.models import Project
from jobs.states import PRIORITY_BY_NAME
from serving.deployments import api as deployment_api
from serving.deployments import config as flags
from serving.deployments import services
from serving.models import Model, ModelVersion

#: Form fields (all optional but name) and how to read them.
INT_FIELDS = ("replicas", "min_replicas", "max_replicas", "version", "cpus_per_replica",
              "gpus_per_replica", "max_batch_size", "max_queue", "max_model_len")  # fmt: skip
FLOAT_FIELDS = ("max_wait_ms", "request_timeout", "target_ongoing_requests")


def _form_data(post: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    """The non-empty fields of a form, as numbers where they are numbers (a value that is
    not one is passed as text, so the serializer says what is wrong with it)."""
    data: dict[str, Any] = {}
    for name in fields:
        raw = (post.get(name) or "").strip()
        if not raw:
            continue
        try:
            data[name] = (
                int(raw) if name in INT_FIELDS else float(raw) if name in FLOAT_FIELDS else raw
            )
        except ValueError:
            data[name] = raw
    if "target_ongoing_requests" in data:
        data["autoscaling"] = {"target_ongoing_requests": data.pop("target_ongoing_requests")}
    return data


def _errors(exc: APIException | ServiceError) -> list[str]:
    if isinstance(exc, ServiceError):
        return [exc.message]
    detail = exc.detail
    if isinstance(detail, dict):
        out = []
        for field, problems in detail.items():
            items = problems if isinstance(problems, list) else [problems]
            out += [f"{field}: {p}" if field != "detail" else str(p) for p in items]
        return out
    return [str(d) for d in (detail if isinstance(detail, list) else [detail])]


@login_required
def model_list(request: HttpRequest) -> HttpResponse:
    models = list(
        scope_to_user(Model.objects.select_related("project"), request.user, "project")
        .prefetch_related("versions")
        .order_by("project__name", "name")
    )
    from controlplane import pages
    from serving.models import Deployment

    serving_now: dict[int, list] = {}
    live = Deployment.objects.exclude(state="DELETED").select_related("revision")
    for dep in scope_to_user(live, request.user, "project"):
        if dep.revision is not None:
            serving_now.setdefault(dep.revision.model_version_id, []).append(dep)
    for model in models:
        model.can_write = pages.can(request.user, model.project_id)
        model.can_delete = pages.can(request.user, model.project_id, "admin")
        for version in model.versions.all():
            version.deployments = serving_now.get(version.pk, [])
    projects = [p for p in scope_to_user(Project.objects.order_by("name"), request.user, "")
                if pages.can(request.user, p.pk)]  # fmt: skip
    return render(
        request,
        "serving/models.html",
        {"models": models, "quantization": flags.QUANTIZATION, "priorities": PRIORITY_BY_NAME,
         "projects": projects},
    )  # fmt: skip


DEPLOY_FIELDS = ("name", "replicas", "min_replicas", "max_replicas", "cpus_per_replica",
                 "gpus_per_replica", "quantization", "max_batch_size", "priority",
                 "target_ongoing_requests")  # fmt: skip


@login_required
@require_POST
def deploy(request: HttpRequest, version_id: int) -> HttpResponse:
    visible = scope_to_user(ModelVersion.objects.select_related("model__project"), request.user,
                            "model__project")  # fmt: skip
    version = get_object_or_404(visible, pk=version_id)
    data = _form_data(request.POST, DEPLOY_FIELDS)
    if request.POST.get("prefix_affinity"):
        data["prefix_affinity"] = True
    if data.get("min_replicas") is not None or data.get("max_replicas") is not None:
        data.pop("replicas", None)
    data.update(model=version.model.name, version=version.version)
    serializer = deployment_api.DeploymentWriteSerializer(data=data)
    try:
        serializer.is_valid(raise_exception=True)
        valid = dict(serializer.validated_data)
        low, high = valid.get("min_replicas", 1), valid.get("max_replicas")
        if "replicas" in valid:
            low = high = valid["replicas"]
        dep = services.create_deployment(
            actor_for(request),
            version.model.project,
            name=valid["name"],
            version=version,
            min_replicas=low,
            max_replicas=high if high is not None else max(low, 1),
            priority=PRIORITY_BY_NAME[valid.get("priority", "normal")],
            autoscaling=valid.get("autoscaling"),
            config=deployment_api._config_of(valid),
        )
    except (APIException, ServiceError) as exc:
        for text in _errors(exc):
            messages.error(request, f"Deploy {version}: {text}")
        return redirect("model-list-page")
    messages.success(request, f"Deployment {dep.name} created: its replicas are starting.")
    return redirect("deployment-page", dep.pk)


def _visible_deployments(request: HttpRequest):
    return scope_to_user(deployment_api.queryset(), request.user, "project")


@login_required
def deployment_list(request: HttpRequest) -> HttpResponse:
    return render(
        request, "serving/deployments.html", {"deployments": _visible_deployments(request)}
    )


@login_required
def deployment_detail(request: HttpRequest, deployment_id: int) -> HttpResponse:
    dep = get_object_or_404(_visible_deployments(request), pk=deployment_id)
    data = deployment_api.DeploymentSerializer(dep, context={"energy": True}).data
    samples = deployment_api.SampleSerializer(
        list(dep.samples.order_by("-time")[:720])[::-1], many=True
    ).data
    versions = (
        dep.revision.model_version.model.versions.order_by("-version") if dep.revision else []
    )
    return render(
        request,
        "serving/deployment.html",
        {"dep": dep, "data": data, "samples": samples, "versions": versions,
         "events": dep.events.order_by("-id")[:50]},
    )  # fmt: skip


ACTION_FIELDS = ("replicas", "min_replicas", "max_replicas", "version", "max_batch_size",
                 "quantization", "target_ongoing_requests")  # fmt: skip


@login_required
@require_POST
def deployment_action(request: HttpRequest, deployment_id: int) -> HttpResponse:
    dep = get_object_or_404(_visible_deployments(request), pk=deployment_id)
    actor = actor_for(request)
    what = request.POST.get("action", "")
    try:
        if what == "delete":
            services.delete_deployment(actor, dep)
            messages.success(request, f"Deleting {dep.name}: its replicas drain, then stop.")
            return redirect("deployment-list-page")
        if what == "promote":
            services.promote_canary(actor, dep)
        elif what == "rollback":
            services.rollback_canary(actor, dep)
        elif what in ("scale", "rollout"):
            data = _form_data(request.POST, ACTION_FIELDS)
            serializer = deployment_api.DeploymentWriteSerializer(data=data, partial=True)
            serializer.is_valid(raise_exception=True)
            valid = dict(serializer.validated_data)
            changes: dict[str, Any] = {
                k: valid[k]
                for k in ("replicas", "min_replicas", "max_replicas", "autoscaling")
                if k in valid
            }
            if "version" in valid:
                changes["version"] = services.resolve_version(
                    dep.project, dep.revision.model_version.model.name, valid["version"]
                )
            config = deployment_api._config_of(valid)
            if config:
                changes["config"] = config
            if not changes:
                raise ValidationError({"detail": ["Nothing to change."]})
            services.update_deployment(actor, dep, **changes)
        else:
            raise ValidationError({"action": ["Unknown action."]})
    except (APIException, ServiceError) as exc:
        for text in _errors(exc):
            messages.error(request, text)
    else:
        messages.success(request, f"{dep.name}: {what} requested.")
    return redirect("deployment-page", dep.pk)


# --- the registry's pages: a new model, upload a version, delete a version ----------------


@login_required
@require_POST
def model_create(request: HttpRequest) -> HttpResponse:
    from controlplane.tenancy.api.base import project_for
    from serving import services as registry

    name = (request.POST.get("name") or "").strip()
    project = Project.objects.filter(name=request.POST.get("project", "")).first()
    try:
        if not name or len(name) > 100:
            raise ServiceError("Name the model (up to 100 characters).", "name")
        model = registry.create_model(
            actor_for(request), project_for(request.user, project), name,
            (request.POST.get("description") or "")[:500],
        )  # fmt: skip
    except (APIException, ServiceError) as exc:
        for text in _errors(exc):
            messages.error(request, f"New model: {text}")
    else:
        messages.success(request, f"Model {model} created: upload a version or register one.")
    return redirect("model-list-page")


def _visible_models(request: HttpRequest):
    return scope_to_user(Model.objects.select_related("project"), request.user, "project")


@login_required
@require_POST
def version_upload(request: HttpRequest, model_id: int) -> HttpResponse:
    """A tar/zip of a Hugging Face directory becomes the model's next version."""
    from django.conf import settings

    from controlplane import pages
    from serving import services as registry

    model = get_object_or_404(_visible_models(request), pk=model_id)
    refused = pages.body_too_large(request, settings.MODEL_UPLOAD_MAX_BYTES + 65536, "models")
    try:
        if refused:
            raise ServiceError(refused, "archive")
        archive = request.FILES.get("archive")
        if archive is None:
            raise ServiceError("Choose the archive (tar, tar.gz or zip) to upload.", "archive")
        version = registry.register_upload(actor_for(request), model, archive.file, archive.size)
    except (APIException, ServiceError) as exc:
        for text in _errors(exc):
            messages.error(request, f"Upload to {model}: {text}")
    else:
        messages.success(request, f"{version} registered.")
    return redirect(f"{reverse('model-list-page')}#model-{model.pk}")


@login_required
@require_POST
def version_delete(request: HttpRequest, version_id: int) -> HttpResponse:
    from serving import services as registry

    visible = scope_to_user(ModelVersion.objects.select_related("model__project"), request.user,
                            "model__project")  # fmt: skip
    version = get_object_or_404(visible, pk=version_id)
    try:
        registry.delete_version(actor_for(request), version)
    except (APIException, ServiceError) as exc:
        for text in _errors(exc):
            messages.error(request, f"Delete {version}: {text}")
    else:
        messages.success(request, f"{version} deleted.")
    return redirect("model-list-page")
