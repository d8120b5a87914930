"""Server-rendered sweep pages: the list (filters, sort), a sweep's page (its trials
sortable by the metric, hyperparameters against the metric, the best trial, cancel)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST
from rest_framework.exceptions import APIException

from controlplane import pages
from controlplane.tenancy.api.base import scope_to_user
from controlplane.tenancy.auth import actor_for
from controlplane.tenancy.errors import Forbidden, ServiceError
from controlplane.tenancy.models import Project
from jobs.sweeps import services
from jobs.sweeps.api import SweepSerializer, TrialSerializer, ordered
from jobs.sweeps.models import Sweep, SweepState

PAGE_SIZE = 50
SORTS = {"-id": "newest first", "id": "oldest first", "name": "name", "state": "state"}
TRIAL_SORTS = ("number", "-number", "metric", "-metric", "state")


class SweepFilterForm(forms.Form):
    q = forms.CharField(required=False, max_length=100, label="Search")
    project = forms.ChoiceField(required=False)
    state = forms.ChoiceField(required=False)
    sort = forms.ChoiceField(required=False, choices=list(SORTS.items()))

    def __init__(self, data: Any, projects: list[str]) -> None:
        super().__init__(data)
        self.fields["project"].choices = [("", "all"), *((p, p) for p in projects)]
        self.fields["state"].choices = [("", "any"), *((s, s.lower()) for s in SweepState.values)]

    def apply(self, sweeps: QuerySet) -> QuerySet:
        self.is_valid()
        f = getattr(self, "cleaned_data", {})
        if q := f.get("q"):
            term = q.lstrip("#")
            sweeps = sweeps.filter(Q(name__icontains=q) | (Q(pk=int(term)) if term.isdigit()
                                                           else Q(pk__in=[])))  # fmt: skip
        if f.get("project"):
            sweeps = sweeps.filter(project__name=f["project"])
        if f.get("state"):
            sweeps = sweeps.filter(state=f["state"])
        sort = f.get("sort") or "-id"
        return sweeps.order_by(sort, "-id") if sort not in ("-id", "id") else sweeps.order_by(sort)


def visible_sweeps(request: HttpRequest) -> QuerySet:
    return scope_to_user(
        Sweep.objects.select_related("project", "created_by"), request.user, "project"
    )


@login_required
def sweep_list(request: HttpRequest) -> HttpResponse:
    projects = scope_to_user(Project.objects.order_by("name"), request.user, "")
    form = SweepFilterForm(request.GET, list(projects.values_list("name", flat=True)))
    sweeps = form.apply(visible_sweeps(request))
    page = Paginator(sweeps, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = SweepSerializer(page.object_list, many=True).data
    return render(request, "sweeps/list.html", {"page": page, "rows": rows, "form": form})


@login_required
def sweep_detail(request: HttpRequest, sweep_id: int) -> HttpResponse:
    sweep = get_object_or_404(visible_sweeps(request), pk=sweep_id)
    sort = request.GET.get("sort", "number")
    if sort not in TRIAL_SORTS:
        sort = "number"
    trials = TrialSerializer(ordered(sweep.trials.select_related("job"), sort), many=True).data
    summary = SweepSerializer(sweep).data
    names = list(sweep.search["parameters"])
    running = sweep.state == SweepState.RUNNING
    best = summary["best"]
    for trial in trials:
        trial["values"] = [trial["hparams"].get(n) for n in names]
        trial["best"] = best is not None and trial["number"] == best["number"]
    return render(
        request,
        "sweeps/detail.html",
        {"sweep": sweep, "summary": summary, "trials": trials, "names": names, "sort": sort,
         "best": best, "can_act": pages.can(request.user, sweep.project_id),
         "running": running,
         "page_data": {"id": sweep.pk, "metric": sweep.metric, "goal": sweep.goal,
                       "names": names, "sort": sort, "running": running,
                       "log": [n for n, p in sweep.search["parameters"].items() if p.get("log")]},
         "job_yaml": pages.spec_yaml(sweep.job_spec), "search_yaml": pages.spec_yaml(
             {k: v for k, v in sweep.search.items() if v is not None})},
    )  # fmt: skip


@login_required
@require_POST
def sweep_cancel(request: HttpRequest, sweep_id: int) -> HttpResponse:
    sweep = get_object_or_404(visible_sweeps(request), pk=sweep_id)
    if not pages.can(request.user, sweep.project_id):
        raise PermissionDenied("Cancelling a sweep needs the member role in its project.")
    try:
        services.cancel_sweep(actor_for(request), sweep)
    except Forbidden as exc:
        raise PermissionDenied(exc.message) from None
    except (APIException, ServiceError) as exc:
        for line in pages.error_lines(exc):
            messages.error(request, f"Could not cancel sweep #{sweep.pk}: {line}")
        return redirect("sweep-page", sweep.pk)
    messages.success(request, f"Sweep #{sweep.pk} cancelled; its live trials are stopping.")
    return redirect("sweep-page", sweep.pk)
