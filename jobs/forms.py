"""The jobs pages' forms: the list's filters and the built-in recipe's submit form.

The submit form only builds a spec; checking it is the API's work (``services.submit_job``
with ``JobSpecSerializer``), so the page shows the API's own messages per field."""

from __future__ import annotations

from typing import Any

from django import forms
from django.db.models import Q, QuerySet

from jobs.spec import encode_tags
from jobs.states import JOB_TERMINAL, PRIORITY_BY_NAME, JobState
from workers.recipes.config import PRECISIONS, PRESETS, STRATEGIES

SORTS = {
    "-id": "newest first",
    "id": "oldest first",
    "name": "name",
    "state": "state",
    "-priority": "priority",
    "-finished_at": "recently finished",
}
RECIPE_MODULE = "workers.recipes.causal_lm"


class JobFilterForm(forms.Form):
    q = forms.CharField(required=False, max_length=100, label="Search")
    project = forms.ChoiceField(required=False)
    state = forms.ChoiceField(required=False, choices=[("", "any"), ("active", "active")])
    user = forms.CharField(required=False, max_length=150)
    tag = forms.CharField(required=False, max_length=32)
    created_after = forms.DateField(required=False, label="From", widget=forms.DateInput(
        attrs={"type": "date"}))  # fmt: skip
    created_before = forms.DateField(required=False, label="To", widget=forms.DateInput(
        attrs={"type": "date"}))  # fmt: skip
    sort = forms.ChoiceField(required=False, choices=list(SORTS.items()))

    def __init__(self, data: Any, projects: list[str]) -> None:
        super().__init__(data)
        self.fields["project"].choices = [("", "all"), *((p, p) for p in projects)]
        self.fields["state"].choices += [(s, s.lower()) for s in JobState.values]

    def apply(self, jobs: QuerySet) -> QuerySet:
        """The jobs that match the valid filters (an invalid one is ignored and shown)."""
        self.is_valid()
        f = getattr(self, "cleaned_data", {})
        if q := f.get("q"):
            term = q.lstrip("#")
            match = Q(name__icontains=q)
            if term.isdigit():
                match |= Q(pk=int(term))
            jobs = jobs.filter(match)
        if f.get("project"):
            jobs = jobs.filter(project__name=f["project"])
        if f.get("state") == "active":
            jobs = jobs.exclude(state__in=JOB_TERMINAL)
        elif f.get("state"):
            jobs = jobs.filter(state=f["state"])
        if f.get("user"):
            jobs = jobs.filter(created_by__username=f["user"])
        if f.get("tag"):
            jobs = jobs.filter(tags__contains=encode_tags([f["tag"]]))
        if f.get("created_after"):
            jobs = jobs.filter(created_at__date__gte=f["created_after"])
        if f.get("created_before"):
            jobs = jobs.filter(created_at__date__lte=f["created_before"])
        sort = f.get("sort") or "-id"
        return jobs.order_by(sort, "-id") if sort not in ("-id", "id") else jobs.order_by(sort)


class RecipeForm(forms.Form):
    """The built-in language-model recipe as a job: what most first runs change."""

    name = forms.CharField(max_length=100, initial="tiny-lm")
    project = forms.ChoiceField()
    preset = forms.ChoiceField(choices=[(p, p) for p in sorted(PRESETS)], initial="tiny")
    max_steps = forms.IntegerField(min_value=1, max_value=1_000_000, initial=100)
    precision = forms.ChoiceField(choices=[(p, p) for p in PRECISIONS], initial="fp32")
    strategy = forms.ChoiceField(choices=[(s, s) for s in STRATEGIES], initial="ddp")
    nodes = forms.IntegerField(min_value=1, initial=1)
    gpus_per_node = forms.IntegerField(min_value=0, initial=0, label="GPUs per node")
    procs_per_node = forms.IntegerField(
        min_value=1, initial=1, label="CPU processes per node", help_text="when no GPUs"
    )
    priority = forms.ChoiceField(choices=[(p, p) for p in PRIORITY_BY_NAME], initial="normal")
    tags = forms.CharField(
        required=False, max_length=600, help_text="comma-separated, e.g. baseline, lr-sweep"
    )

    def __init__(self, data: Any = None, projects: list[str] = (), **kwargs: Any) -> None:
        super().__init__(data, **kwargs)
        self.fields["project"].choices = [(p, p) for p in projects]

    def spec(self) -> dict[str, Any]:
        f = self.cleaned_data
        resources: dict[str, int] = {"nodes": f["nodes"], "gpus_per_node": f["gpus_per_node"]}
        if not f["gpus_per_node"]:
            resources["procs_per_node"] = f["procs_per_node"]
        return {
            "name": f["name"],
            "project": f["project"],
            "entrypoint": ["python", "-m", RECIPE_MODULE],
            "args": ["--preset", f["preset"], "--max-steps", str(f["max_steps"]),
                     "--precision", f["precision"], "--strategy", f["strategy"]],
            "resources": resources,
            "priority": f["priority"],
            "tags": [t.strip() for t in f["tags"].split(",") if t.strip()],
        }  # fmt: skip

    #: Where the API's field names land on this form (the rest show above it).
    API_FIELDS = {
        "name": "name",
        "project": "project",
        "resources.nodes": "nodes",
        "resources.gpus_per_node": "gpus_per_node",
        "resources.procs_per_node": "procs_per_node",
        "resources": "gpus_per_node",
        "priority": "priority",
        "tags": "tags",
    }
