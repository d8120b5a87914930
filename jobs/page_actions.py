"""What the browser can do to jobs: submit (the recipe form or any spec as YAML, with a
code upload), cancel, resubmit, clone and edit, and register a checkpoint as a model
version. Each posts a CSRF-protected form to a view here that calls the same service as
the REST API, so the role checks, the messages and the audit events are the API's; a
refusal comes back as the API's message, next to the field it is about."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST
from rest_framework.exceptions import APIException

from controlplane import pages
from controlplane.tenancy.auth import actor_for
from controlplane.tenancy.errors import Forbidden, ServiceError
from jobs import services
from jobs.forms import RecipeForm
from jobs.models import Job
from jobs.spec import parse_spec_text
from jobs.views import _job, _projects, _writable

MAX_SPEC_CHARS = 64 * 1024


def _member_or_403(request: HttpRequest, job: Job) -> None:
    if not pages.can(request.user, job.project_id):
        raise PermissionDenied(
            "Viewers cannot change jobs: ask a project admin for the member role."
        )


def _spec_errors(exc: APIException | ServiceError, form: RecipeForm | None) -> list[str]:
    """Put each API error on its form field when the form has it; return the others."""
    rest: list[str] = []
    for field, problems in pages.field_errors(exc).items():
        item = re.sub(r"\.\d+$", "", field)  # "tags.2": the form's one tags field
        target = RecipeForm.API_FIELDS.get(item) if form is not None else None
        for problem in problems:
            if target:
                form.add_error(target, problem)
            else:
                rest.append(f"{field}: {problem}" if field else problem)
    return rest


@login_required
def job_submit(request: HttpRequest) -> HttpResponse:
    projects = _projects(request)
    writable = _writable(request)
    if not writable:
        raise PermissionDenied("You are a viewer in every project: you cannot submit jobs.")
    source = None
    if request.GET.get("from", "").isdigit():
        source = _job(request, int(request.GET["from"]))
    # An upload over the limit is refused with 413 before the spec is looked at.
    too_large = request.method == "POST" and pages.body_too_large(
        request, settings.JOB_CODE_MAX_BYTES + MAX_SPEC_CHARS * 4, "code archives"
    )
    post = request.POST if request.method == "POST" and not too_large else None
    mode = (post or {}).get("mode") or ("yaml" if source else "recipe")
    recipe = RecipeForm(post if mode == "recipe" else None, projects=projects)
    spec_text = (post or {}).get("spec", "")
    if source is not None and request.method == "GET":
        spec_text = pages.spec_yaml(source.spec)
    errors: list[str] = [too_large] if too_large else []
    if request.method == "POST" and not too_large:
        try:
            job = _submit(request, mode, recipe, spec_text, source)
        except (APIException, ServiceError) as exc:
            errors = _spec_errors(exc, recipe if mode == "recipe" else None)
        else:
            if job is not None:
                messages.success(request, f"Job #{job.pk} {job.name} submitted.")
                return redirect("job-page", job.pk)
    return render(
        request,
        "jobs/submit.html",
        {"recipe": recipe, "mode": mode, "spec_text": spec_text, "errors": errors,
         "source": source},
        status=413 if too_large else 400 if errors or recipe.errors else 200,
    )  # fmt: skip


def _submit(
    request: HttpRequest, mode: str, recipe: RecipeForm, spec_text: str, source: Job | None
) -> Job | None:
    actor = actor_for(request)
    if mode == "recipe":
        if not recipe.is_valid():
            return None
        return services.submit_job(actor, recipe.spec())
    if len(spec_text) > MAX_SPEC_CHARS:
        raise ServiceError(f"The spec is over {MAX_SPEC_CHARS // 1024} KiB.", "spec")
    if not spec_text.strip():
        raise ServiceError("Write the job spec (YAML or JSON).", "spec")
    code = request.FILES.get("code")
    return services.submit_job(
        actor,
        parse_spec_text(spec_text),
        code=code.file if code else None,
        code_size=code.size if code else 0,
        code_from=source if code is None else None,
    )


def _act(request: HttpRequest, job_id: int, verb: str, run: Any) -> HttpResponse:
    job = _job(request, job_id)
    _member_or_403(request, job)
    try:
        result = run(actor_for(request), job)
    except Forbidden as exc:
        raise PermissionDenied(exc.message) from None
    except (APIException, ServiceError) as exc:
        for line in pages.error_lines(exc):
            messages.error(request, f"Could not {verb} job #{job.pk}: {line}")
        return redirect(pages.safe_next(request, "job-page", job.pk))
    if verb == "resubmit":
        messages.success(request, f"Job #{job.pk} resubmitted as #{result.pk}.")
        return redirect("job-page", result.pk)
    messages.success(request, f"Job #{job.pk}: cancel requested.")
    return redirect(pages.safe_next(request, "job-page", job.pk))


@login_required
@require_POST
def job_cancel(request: HttpRequest, job_id: int) -> HttpResponse:
    return _act(request, job_id, "cancel", services.cancel_job)


@login_required
@require_POST
def job_resubmit(request: HttpRequest, job_id: int) -> HttpResponse:
    return _act(request, job_id, "resubmit", services.resubmit_job)


@login_required
@require_POST
def register_checkpoint(request: HttpRequest, job_id: int) -> HttpResponse:
    """A checkpoint of this job becomes a version of a model (made when it is new)."""
    from serving import services as registry
    from serving.models import Model

    job = _job(request, job_id)
    _member_or_403(request, job)
    name = (request.POST.get("model") or "").strip()
    from_outputs = "outputs" in request.POST  # a directory of its outputs, not a checkpoint
    checkpoint = job.checkpoints.filter(pk=request.POST.get("checkpoint") or 0).first()
    actor = actor_for(request)
    what = f"outputs/{request.POST['outputs']}" if from_outputs else "the checkpoint"
    try:
        if checkpoint is None and not from_outputs:
            raise ServiceError("No such checkpoint of this job (pruned?).", "checkpoint")
        if not name or len(name) > 100:
            raise ServiceError("Name the model (up to 100 characters).", "model")
        model = Model.objects.filter(project=job.project, name=name).first()
        made = model is None
        if made:
            model = registry.create_model(actor, job.project, name)
        try:
            if from_outputs:
                version = registry.register_outputs(actor, model, job, request.POST["outputs"])
            else:
                version = registry.register_checkpoint(actor, model, checkpoint)
        except BaseException:
            if made:  # no empty model left behind by a refused registration
                model.delete()
            raise
    except Forbidden as exc:
        raise PermissionDenied(exc.message) from None
    except (APIException, ServiceError) as exc:
        for line in pages.error_lines(exc):
            messages.error(request, f"Could not register {what}: {line}")
        return redirect("job-page", job.pk)
    if from_outputs:
        left = f" (left out: {len(version.notes.splitlines())} file(s))" if version.notes else ""
        messages.success(request, f"Its {what} is {model.name} v{version.version}{left}.")
    else:
        messages.success(
            request, f"Checkpoint at step {checkpoint.step} is {model.name} v{version.version}."
        )
    return redirect("job-page", job.pk)
