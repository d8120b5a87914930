"""Server-rendered job pages: the list and a job's live page (charts via plotly.js)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from controlplane.tenancy.api.base import scope_to_user
from jobs.api.serializers import AttemptSerializer, JobDetailSerializer
from jobs.models import Job
from jobs.states import JobState


@login_required
def job_list(request: HttpRequest) -> HttpResponse:
    jobs = scope_to_user(
        Job.objects.select_related("project", "created_by"), request.user, "project"
    ).order_by("-id")
    state = request.GET.get("state", "")
    if state in JobState.values:
        jobs = jobs.filter(state=state)
    page = Paginator(jobs, 50).get_page(request.GET.get("page"))
    return render(
        request, "jobs/list.html", {"page": page, "state": state, "states": JobState.values}
    )


@login_required
def job_detail(request: HttpRequest, job_id: int) -> HttpResponse:
    visible = scope_to_user(Job.objects.select_related("project"), request.user, "project")
    job = get_object_or_404(visible, pk=job_id)
    attempts = AttemptSerializer(
        job.attempts.prefetch_related("nodes").order_by("-number"), many=True
    ).data
    detail = JobDetailSerializer(job, context={"detail": True}).data
    return render(request, "jobs/detail.html", {"job": job, "detail": detail, "attempts": attempts})
