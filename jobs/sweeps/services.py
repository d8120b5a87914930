"""Every change to a sweep: create it, keep ``max_concurrent`` trials going (the
controller), judge a trial on a report (ASHA), record a trial's end, cancel.

The controller runs on events, never on a timer: after a sweep is created, after the
commit that ended one of its trials' jobs, and after the commit of a metrics report. Each
step locks the sweep's row, so two workers ending trials at once submit each next trial
once.
"""

from __future__ import annotations

import copy
import logging
from typing import IO, Any

from django.db import transaction
from django.db.models import Count, Max
from django.utils import timezone
from rest_framework import serializers
from rest_framework.exceptions import APIException, ValidationError

from controlplane.tenancy.errors import Conflict
from controlplane.tenancy.models import Role
from controlplane.tenancy.services import Actor, record, require_role
from jobs import services as job_services
from jobs import signals
from jobs.models import Job
from jobs.states import JobState
from jobs.sweeps import asha
from jobs.sweeps.models import Sweep, SweepState, Trial, TrialState
from jobs.sweeps.space import REFERENCE, SearchSerializer, draw, text, trial_count

log = logging.getLogger(__name__)

_ENDED = {
    JobState.SUCCEEDED: TrialState.SUCCEEDED,
    JobState.FAILED: TrialState.FAILED,
    JobState.CANCELLED: TrialState.CANCELLED,
}


class SweepSpecSerializer(SearchSerializer):
    """A sweep file: its name and project, the base job spec, and the search."""

    name = serializers.RegexField(
        r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,79}$",
        max_length=80,
        error_messages={"invalid": "Letters, digits, '.', '_', '-' or spaces; at most 80."},
    )
    project = serializers.CharField(max_length=63, default="default")
    job = serializers.DictField(
        help_text="The job spec every trial runs (no name or project: the sweep's); its args "
        "and env may say where a hyperparameter goes with ${hp.NAME}, else each is added "
        "to the args as --NAME VALUE."
    )

    def validate_job(self, job: dict) -> dict:
        clash = {"name", "project"} & set(job)
        if clash:
            raise serializers.ValidationError(
                f"{', '.join(sorted(clash))}: a trial's name and project are the sweep's."
            )
        return job

    def validate(self, attrs: dict) -> dict:
        attrs = super().validate(attrs)
        unknown = sorted(set(_references(attrs["job"])) - set(attrs["parameters"]))
        if unknown:
            raise serializers.ValidationError(
                {"job": f"${{hp.{unknown[0]}}} names no hyperparameter of the sweep."}
            )
        return attrs


def _references(job: dict) -> list[str]:
    found = []
    for arg in job.get("args") or []:
        if isinstance(arg, str):
            found += REFERENCE.findall(arg)
    for value in (job.get("env") or {}).values():
        if isinstance(value, str):
            found += REFERENCE.findall(value)
    return found


def trial_spec(sweep: Sweep, number: int, hparams: dict) -> dict:
    """The job spec of trial ``number``: the base spec with its hyperparameters in."""
    spec = copy.deepcopy(sweep.job_spec)

    def put(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return REFERENCE.sub(lambda m: text(hparams[m.group(1)]), value)

    referenced = set(_references(spec))
    spec["args"] = [put(a) for a in spec.get("args") or []]
    for name, value in hparams.items():
        if name not in referenced:
            spec["args"] += [f"--{name}", text(value)]
    if spec.get("env"):
        spec["env"] = {k: put(v) for k, v in spec["env"].items()}
    spec["name"] = f"{sweep.name}-{number}"
    spec["project"] = sweep.project.name
    spec["tags"] = [*(spec.get("tags") or []), f"sweep-{sweep.pk}"]
    return spec


def _actor_of(sweep: Sweep) -> Actor:
    return Actor(user=sweep.created_by, via="sweep") if sweep.created_by else Actor.system()


def create_sweep(
    actor: Actor, data: Any, code: IO[bytes] | None = None, code_size: int = 0
) -> Sweep:
    """Validate a sweep file and submit its first trials (all or nothing: a trial spec the
    jobs API would refuse is a 400 here, under ``job``)."""
    if not isinstance(data, dict):
        raise ValidationError({"sweep": ["The sweep must be a mapping of fields (YAML or JSON)."]})
    serializer = SweepSpecSerializer(data=data)
    serializer.is_valid(raise_exception=True)
    valid = dict(serializer.validated_data)
    project = job_services.project_for(actor, valid.pop("project"))
    name, job_spec = valid.pop("name"), valid.pop("job")
    search = {**valid, "parameters": valid["parameters"]}
    with transaction.atomic():
        sweep = Sweep.objects.create(
            project=project, created_by=actor.user, name=name, job_spec=job_spec,
            search=search, total=trial_count(search),
        )  # fmt: skip
        try:
            _fill(sweep, actor, code=code, code_size=code_size)
        except ValidationError as exc:
            raise ValidationError({"job": exc.detail}) from None
        record(actor, "sweep.created", sweep, project=project,
               detail={"search": search, "trials": sweep.total})  # fmt: skip
    return sweep


def _fill(sweep: Sweep, actor: Actor, code: IO[bytes] | None = None, code_size: int = 0) -> int:
    """Submit trials until ``max_concurrent`` are live or all are drawn; how many."""
    last = sweep.trials.aggregate(last=Max("number"))["last"]
    made = 0 if last is None else last + 1  # numbers go on past a trial whose job was deleted
    live = sweep.trials.filter(state=TrialState.LIVE).count()
    first = sweep.trials.select_related("job").filter(number=0).first()
    code_from = first.job if first else None
    submitted = 0
    while made < sweep.total and live < sweep.search["max_concurrent"]:
        hparams = draw(sweep.search, made)
        job = job_services.submit_job(
            actor, trial_spec(sweep, made, hparams),
            code=code if made == 0 else None, code_size=code_size, code_from=code_from,
        )  # fmt: skip
        Trial.objects.create(sweep=sweep, number=made, job=job, hparams=hparams)
        code_from = code_from or job
        made, live, submitted = made + 1, live + 1, submitted + 1
    return submitted


def advance(sweep_id: int) -> None:
    """Submit the next trials of a running sweep, or end it when every trial has ended."""
    with transaction.atomic():
        sweep = Sweep.objects.select_for_update().select_related("project").get(pk=sweep_id)
        if sweep.state != SweepState.RUNNING:
            return
        try:
            _fill(sweep, _actor_of(sweep))
        except (ValidationError, APIException) as exc:
            _finish(sweep, SweepState.FAILED, f"Could not submit a trial: {_message(exc)}")
            return
        by_state = sweep.trials.order_by().values_list("state").annotate(n=Count("id"))
        counts = dict(by_state.values_list("state", "n"))
        if sum(counts.values()) < sweep.total or counts.get(TrialState.LIVE):
            return
        ran = counts.get(TrialState.SUCCEEDED, 0) + counts.get(TrialState.STOPPED, 0)
        if ran:
            _finish(sweep, SweepState.SUCCEEDED, f"{ran} of {sweep.total} trial(s) ran.")
        else:
            _finish(sweep, SweepState.FAILED, f"None of its {sweep.total} trial(s) ran to its end.")


def _message(exc: APIException) -> str:
    detail = exc.detail
    while isinstance(detail, dict | list) and detail:
        detail = next(iter(detail.values())) if isinstance(detail, dict) else detail[0]
    return str(detail)[:250]


def _finish(sweep: Sweep, state: str, reason: str) -> None:
    sweep.state, sweep.reason, sweep.finished_at = state, reason[:300], timezone.now()
    sweep.save(update_fields=["state", "reason", "finished_at"])
    sweep_id = sweep.pk
    transaction.on_commit(
        lambda: signals.sweep_finished.send(sender=Sweep, sweep_id=sweep_id, state=state)
    )


def trial_ended(job_id: int, job_state: str) -> None:
    """A trial's job reached a final state: record it, then move the sweep on."""
    with transaction.atomic():
        trial = Trial.objects.select_for_update().filter(job_id=job_id).first()
        if trial is None:
            return
        if trial.state == TrialState.LIVE:
            trial.state = _ENDED.get(job_state, TrialState.FAILED)
            trial.save(update_fields=["state"])
        sweep_id = trial.sweep_id
    advance(sweep_id)


def reported(job_id: int, step: int, values: dict[str, float]) -> asha.Decision | None:
    """A trial reported metrics: keep its metric and, with ASHA, judge it at each rung it
    reached; a trial judged worse is stopped (its job cancelled). The decision, if any."""
    trial = Trial.objects.select_related("sweep").filter(job_id=job_id).first()
    if trial is None or trial.state != TrialState.LIVE:
        return None
    sweep = trial.sweep
    if sweep.metric not in values:
        return None
    value = values[sweep.metric]
    stopping = sweep.search.get("early_stopping")
    decided = None
    with transaction.atomic():
        if stopping:  # one judgement at a time per sweep: each sees the others' values
            Sweep.objects.select_for_update().filter(pk=sweep.pk).first()
        trial = Trial.objects.select_for_update().get(pk=trial.pk)
        if trial.state != TrialState.LIVE:
            return None
        trial.metric, trial.metric_step = value, step
        fields = ["metric", "metric_step"]
        if stopping and sweep.state == SweepState.RUNNING:
            decided = _judge(trial, sweep, stopping, step, value)
            fields.append("rungs")
            if decided is not None:
                trial.state, trial.reason = TrialState.STOPPED, decided.why(sweep.metric)
                fields += ["state", "reason"]
        trial.save(update_fields=fields)
        if decided is not None:
            _stop_job(trial.job_id)
    return decided


def _judge(
    trial: Trial, sweep: Sweep, stopping: dict, step: int, value: float
) -> asha.Decision | None:
    eta = stopping["reduction_factor"]
    stops = asha.rungs(stopping["min_steps"], stopping["max_steps"], eta)
    others = None
    for index, rung_step in enumerate(stops):
        key = str(index)
        if step < rung_step:
            break
        if key in trial.rungs:
            continue
        if others is None:
            rest = Trial.objects.filter(sweep=sweep).exclude(pk=trial.pk)
            others = list(rest.values_list("rungs", flat=True))
        at_rung = [r[key] for r in others if key in r]
        decision = asha.judge(value, at_rung, index, rung_step, eta, sweep.goal)
        trial.rungs[key] = value
        if not decision.keep:
            return decision
    return None


def _stop_job(job_id: int) -> None:
    job = Job.objects.get(pk=job_id)
    try:
        job_services.cancel_job(Actor.system(), job)
    except Conflict:  # it ended on its own meanwhile
        pass


def cancel_sweep(actor: Actor, sweep: Sweep) -> Sweep:
    """Stop submitting trials and cancel the live ones; the sweep ends CANCELLED."""
    require_role(actor, sweep.project, Role.MEMBER)
    with transaction.atomic():
        sweep = Sweep.objects.select_for_update().select_related("project").get(pk=sweep.pk)
        if sweep.state != SweepState.RUNNING:
            raise Conflict(f"Sweep #{sweep.pk} is {sweep.state} already; nothing to cancel.")
        _finish(sweep, SweepState.CANCELLED, f"Cancelled by {actor.name}.")
        live = Job.objects.filter(trial__sweep=sweep, trial__state=TrialState.LIVE)
        for job in live:
            try:
                job_services.cancel_job(Actor.system(), job)
            except Conflict:
                pass
        record(actor, "sweep.cancelled", sweep, project=sweep.project)
    return sweep


def best_trial(sweep: Sweep) -> Trial | None:
    """The trial with the best metric among those that ran to their end (among all that
    reported it, when none has ended yet)."""
    order = "metric" if sweep.goal == "minimize" else "-metric"
    reported_it = sweep.trials.filter(metric__isnull=False).select_related("job")
    done = reported_it.filter(state=TrialState.SUCCEEDED)
    return (done if done.exists() else reported_it).order_by(order, "number").first()
