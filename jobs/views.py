"""Server-rendered job pages: the live list (filters, sort, selection to compare), a job's
live page, its full log as a download, and the comparison of several jobs. The actions
(submit, cancel, resubmit, clone, register a checkpoint) are in ``jobs.page_actions``."""

from __future__ import annotations

import json

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone

from controlplane import pages, time_ranges
from controlplane.tenancy.api.base import scope_to_user
from controlplane.tenancy.models import Project, Role, role_at_least
from jobs import output_files, queries
from jobs.api.serializers import AttemptSerializer, CheckpointSerializer, JobDetailSerializer
from jobs.forms import JobFilterForm
from jobs.models import Job, LogChunk
from jobs.states import JOB_TERMINAL

PAGE_SIZE = 50
MAX_COMPARE = 8


def visible_jobs(request: HttpRequest) -> QuerySet:
    return scope_to_user(
        Job.objects.select_related("project", "created_by"), request.user, "project"
    )


def _projects(request: HttpRequest) -> list[str]:
    return list(
        scope_to_user(Project.objects.order_by("name"), request.user, "").values_list(
            "name", flat=True
        )
    )


def _writable(request: HttpRequest) -> set[int]:
    """Ids of the projects where the user may submit and cancel (member or admin)."""
    if request.user.is_superuser:
        return set(Project.objects.values_list("pk", flat=True))
    return {
        project_id
        for project_id, role in request.user.memberships.values_list("project_id", "role")
        if role_at_least(role, Role.MEMBER)
    }


@login_required
def job_list(request: HttpRequest) -> HttpResponse:
    form = JobFilterForm(request.GET, _projects(request))
    page = Paginator(form.apply(visible_jobs(request)), PAGE_SIZE).get_page(request.GET.get("page"))
    writable = _writable(request)
    return render(
        request,
        "jobs/list.html",
        {"page": page, "form": form, "writable": writable, "can_submit": bool(writable),
         "live_inserts": page.number == 1},
    )  # fmt: skip


@login_required
def job_row(request: HttpRequest, job_id: int) -> HttpResponse:
    """One row of the list, rendered as the list renders it (the live list fetches it when
    a job changes); 204 when the job does not match the list's filters."""
    form = JobFilterForm(request.GET, _projects(request))
    job = form.apply(visible_jobs(request)).filter(pk=job_id).first()
    if job is None:
        return HttpResponse(status=204)
    list_url = reverse("job-list-page") + (f"?{request.GET.urlencode()}" if request.GET else "")
    return render(
        request,
        "jobs/_row.html",
        {"job": job, "writable": _writable(request), "list_url": list_url},
    )


def _job(request: HttpRequest, job_id: int) -> Job:
    return get_object_or_404(visible_jobs(request), pk=job_id)


@login_required
def job_detail(request: HttpRequest, job_id: int) -> HttpResponse:
    job = _job(request, job_id)
    detail = JobDetailSerializer(job, context={"detail": True}).data
    checkpoints = CheckpointSerializer(job.checkpoints.order_by("-step"), many=True).data
    return render(
        request,
        "jobs/detail.html",
        {"job": job, "detail": detail, "attempts": _attempts(job), "checkpoints": checkpoints,
         "scalars": queries.scalars(job), "can_act": pages.can(request.user, job.project_id),
         "uses_gpus": job.gpus_per_node > 0, "terminal": job.state in JOB_TERMINAL,
         "spec_yaml": pages.spec_yaml(job.spec), "time_range": _time_range(request, job),
         "outputs": _outputs(job)},
    )  # fmt: skip


OUTPUTS_SHOWN = 200


def _outputs(job: Job) -> dict:
    """The first files of the job's outputs (the archive link has them all)."""
    files, total, _ = output_files.listing(job.pk)
    return {"files": files[:OUTPUTS_SHOWN], "count": len(files), "total": total,
            "more": max(0, len(files) - OUTPUTS_SHOWN),
            "declared": (job.spec or {}).get("outputs", ["outputs"]),
            "models": output_files.model_dirs(job.pk)}  # fmt: skip


def _time_range(request: HttpRequest, job: Job) -> dict:
    """The GPU charts' range picker. Its ranges end when the job ended (now while it runs);
    by default the shortest that covers the whole run."""
    keys = time_ranges.TELEMETRY
    end = job.finished_at or timezone.now()
    ran = (end - job.started_at).total_seconds() if job.started_at else 0
    picker = time_ranges.picker(request, keys, time_ranges.covering(ran, keys), live=True)
    picker["end"] = job.finished_at.timestamp() if job.finished_at else None
    return picker


def _attempts(job: Job) -> list:
    return AttemptSerializer(
        job.attempts.prefetch_related("nodes").order_by("-number"), many=True
    ).data


@login_required
def job_attempts(request: HttpRequest, job_id: int) -> HttpResponse:
    """The Attempts table's body (the job page refreshes it when the job's state changes)."""
    return render(request, "jobs/_attempts.html", {"attempts": _attempts(_job(request, job_id))})


@login_required
def job_log(request: HttpRequest, job_id: int) -> StreamingHttpResponse:
    """The job's whole log as text, streamed in chunks (never loaded at once)."""
    job = _job(request, job_id)

    def chunks():
        last = 0
        while True:
            batch = list(
                LogChunk.objects.filter(job=job, pk__gt=last)
                .order_by("id")
                .values_list("id", "text")[:500]
            )
            if not batch:
                break
            last = batch[-1][0]
            yield "".join(text for _, text in batch)
        if job.log_truncated:
            yield "\n[output past the log cap was not kept]\n"

    response = StreamingHttpResponse(chunks(), content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="job-{job.pk}.log"'
    return response


def _flatten(value, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: json.dumps(value) if not isinstance(value, str) else value}


@login_required
def job_compare(request: HttpRequest) -> HttpResponse:
    """Several jobs side by side: their metrics overlaid per name and their specs as one
    table, rows that differ marked. The URL (``?ids=3,7``) is the shareable comparison."""
    raw = request.GET.getlist("ids") or request.GET.get("ids", "").split(",")
    ids: list[int] = []
    for part in ",".join(raw).split(","):
        if part.strip().isdigit() and int(part) not in ids:
            ids.append(int(part))
    found = {job.pk: job for job in visible_jobs(request).filter(pk__in=ids[:MAX_COMPARE])}
    jobs = [found[i] for i in ids if i in found]  # the others are not yours: left out
    specs = [_flatten(job.spec) for job in jobs]
    keys = sorted({k for spec in specs for k in spec})
    rows = [
        {"key": k, "values": [s.get(k, "") for s in specs],
         "differs": len({s.get(k) for s in specs}) > 1}
        for k in keys
    ]  # fmt: skip
    scalars = [queries.scalars(job) for job in jobs]
    scalar_keys = sorted({k for s in scalars for k in s})
    return render(
        request,
        "jobs/compare.html",
        {"jobs": jobs, "rows": rows, "asked": len(ids), "too_many": len(ids) > MAX_COMPARE,
         "scalar_rows": [{"key": k, "values": [s.get(k) for s in scalars]} for k in scalar_keys],
         "job_ids": [job.pk for job in jobs]},
    )  # fmt: skip
