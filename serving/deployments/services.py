"""Every change a user makes to a deployment: create, scale, roll out a new revision,
start a canary, promote or roll it back, delete. Each is checked against the caller's
role, audited, and followed (after commit) by a pass of the controller, which does the
work on the replicas."""

from __future__ import annotations

from typing import Any

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from controlplane import degraded
from controlplane.tenancy.errors import Conflict, Missing
from controlplane.tenancy.models import Project, Role
from controlplane.tenancy.services import Actor, check_priority, record, require_role
from jobs.services import check_feasible
from serving.deployments import config as flags
from serving.deployments import routing
from serving.models import (
    DEPLOYMENT_GONE,
    Deployment,
    DeploymentEvent,
    DeploymentRevision,
    DeploymentState,
    Model,
    ModelVersion,
)

RECONCILE_TASK = "serving.reconcile"
MAX_REPLICAS = 64


def _invalid(field: str, message: str) -> ValidationError:
    return ValidationError({field: [message]})


def request_reconcile() -> None:
    """A controller pass after this transaction commits (the periodic one comes anyway)."""
    transaction.on_commit(
        lambda: degraded.best_effort(
            lambda: current_app.send_task(RECONCILE_TASK, queue=settings.CONTROL_QUEUE, retry=False)
        )
    )


def add_event(deployment: Deployment, message: str, level: str = "info") -> DeploymentEvent:
    return DeploymentEvent.objects.create(deployment=deployment, message=message[:500], level=level)


def resolve_version(project: Project, model: str, version: int | None) -> ModelVersion:
    """The version ``version`` (latest when None) of the project's model named ``model``."""
    found = Model.objects.filter(project=project, name=model).first()
    if found is None:
        raise Missing(f"Project {project.name} has no model named {model!r}.", "model")
    versions = found.versions.order_by("-version")
    row = versions.filter(version=version).first() if version else versions.first()
    if row is None:
        what = f"version {version}" if version else "any version"
        raise Missing(f"Model {model!r} has no {what}; register one first.", "version")
    return row


def _check_scale(min_replicas: int, max_replicas: int) -> None:
    if not 0 <= min_replicas <= max_replicas:
        raise _invalid(
            "replicas", f"min ({min_replicas}) must be at most max ({max_replicas}) and >= 0."
        )
    if not 1 <= max_replicas <= MAX_REPLICAS:
        raise _invalid("replicas", f"max must be between 1 and {MAX_REPLICAS}.")


def _check_config(config: dict[str, Any], project: Project) -> None:
    errors = flags.check(flags.RESOURCE_FLAGS, {k: config[k] for k in flags.RESOURCE_FLAGS})
    errors.update(flags.engine_errors({k: config[k] for k in flags.ENGINE_FLAGS}, 1))
    gpus = int(config["gpus_per_replica"])
    if "quantization" not in errors and not gpus and config["quantization"] in flags.GPU_ONLY:
        errors.update(flags.engine_errors({"quantization": config["quantization"]}, 0))
    if errors:
        raise ValidationError({k: [v] for k, v in errors.items()})
    try:
        check_feasible(1, gpus, int(config["cpus_per_replica"]), project)
    except ValidationError as exc:  # said of a job: say it of the replica's field
        field = "gpus_per_replica" if gpus else "cpus_per_replica"
        detail = exc.detail if isinstance(exc.detail, dict) else {"": exc.detail}
        messages = [
            str(m).replace("the job needs", "a replica needs")
            for v in detail.values()
            for m in (v if isinstance(v, list) else [v])
        ]
        raise ValidationError({field: messages}) from exc


def _new_revision(
    actor: Actor, deployment: Deployment, version: ModelVersion, config: dict
) -> DeploymentRevision:
    if version.model.project_id != deployment.project_id:
        raise _invalid("model", "That model belongs to another project.")
    last = deployment.revisions.order_by("-number").values_list("number", flat=True).first()
    return DeploymentRevision.objects.create(
        deployment=deployment,
        number=(last or 0) + 1,
        model_version=version,
        config=config,
        created_by=actor.user,
    )


def _describe(revision: DeploymentRevision) -> str:
    version = revision.model_version
    return f"revision {revision.number} ({version.model.name} v{version.version})"


@transaction.atomic
def create_deployment(
    actor: Actor,
    project: Project,
    *,
    name: str,
    version: ModelVersion,
    min_replicas: int = 1,
    max_replicas: int = 1,
    priority: int = 1,
    autoscaling: dict | None = None,
    config: dict | None = None,
) -> Deployment:
    """A new deployment; its first replicas start on the controller's next pass."""
    require_role(actor, project, Role.MEMBER)
    check_priority(project, priority)
    if Deployment.objects.filter(project=project, name=name).exclude(state="DELETED").exists():
        raise Conflict(f"Project {project.name} has a deployment named {name!r} already.", "name")
    _check_scale(min_replicas, max_replicas)
    full = flags.with_defaults({**flags.ENGINE_FLAGS, **flags.RESOURCE_FLAGS}, config or {})
    _check_config(full, project)
    deployment = Deployment.objects.create(
        project=project,
        name=name,
        created_by=actor.user,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        # A scale-to-zero deployment starts with one replica, then idles down.
        replicas=max(min_replicas, 1),
        gpus_per_replica=full["gpus_per_replica"],
        cpus_per_replica=full["cpus_per_replica"],
        priority=priority,
        autoscaling=flags.with_defaults(flags.AUTOSCALING, autoscaling or {}),
        reason="Starting its replicas.",
    )
    deployment.revision = _new_revision(actor, deployment, version, full)
    deployment.save(update_fields=["revision"])
    record(
        actor,
        "deployment.created",
        deployment,
        project=project,
        detail={"version": version.pk, "config": full, "replicas": [min_replicas, max_replicas]},
    )
    add_event(deployment, f"Created with {_describe(deployment.revision)}.")
    routing.publish()
    request_reconcile()
    return deployment


@transaction.atomic
def update_deployment(actor: Actor, deployment: Deployment, **changes: Any) -> Deployment:
    """Scale (``min_replicas``/``max_replicas``/``replicas``, ``autoscaling``), change
    ``priority``, roll out a new ``version`` or engine ``config`` (a new revision that
    replaces the replicas one by one), or start/stop a ``canary`` (``{"version": v,
    "percent": p, "replicas": n, "config": {...}}``, or None to roll it back)."""
    deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
    require_role(actor, deployment.project, Role.MEMBER)
    if deployment.state in DEPLOYMENT_GONE:
        raise Conflict(f"Deployment {deployment.name} is being deleted.")
    detail: dict[str, Any] = {}
    lo = changes.pop("min_replicas", deployment.min_replicas)
    hi = changes.pop("max_replicas", deployment.max_replicas)
    if "replicas" in changes:
        lo = hi = changes.pop("replicas")
    if (lo, hi) != (deployment.min_replicas, deployment.max_replicas):
        _check_scale(lo, hi)
        deployment.min_replicas, deployment.max_replicas = lo, hi
        deployment.replicas = min(max(deployment.replicas, lo), hi)
        if lo == hi:
            deployment.replicas = lo
        detail["replicas"] = [lo, hi]
        add_event(
            deployment, f"Replicas set to {lo}" + (f"-{hi} (autoscaled)." if lo != hi else ".")
        )
    if "autoscaling" in changes:
        deployment.autoscaling = flags.with_defaults(
            flags.AUTOSCALING, {**deployment.autoscaling, **changes.pop("autoscaling")}
        )
        detail["autoscaling"] = deployment.autoscaling
    if "priority" in changes:
        check_priority(deployment.project, changes["priority"])
        deployment.priority = changes.pop("priority")
        detail["priority"] = deployment.priority
        from jobs.models import Job

        Job.objects.filter(replica__deployment=deployment).update(priority=deployment.priority)
    version = changes.pop("version", None)
    config = changes.pop("config", None)
    current = deployment.revision
    assert current is not None
    if version is not None or config:
        merged = {**current.config, **(config or {})}
        if (version or current.model_version) != current.model_version or merged != current.config:
            if deployment.canary_id:
                raise Conflict(
                    "A canary is running: promote it or roll it back before a new rollout.",
                    "canary",
                )
            _check_config(merged, deployment.project)
            revision = _new_revision(actor, deployment, version or current.model_version, merged)
            deployment.revision = revision
            deployment.gpus_per_replica = merged["gpus_per_replica"]
            deployment.cpus_per_replica = merged["cpus_per_replica"]
            detail["revision"] = revision.number
            add_event(deployment, f"Rolling out {_describe(revision)}.")
    if "canary" in changes:
        canary = changes.pop("canary")
        if canary is None:
            _end_canary(deployment, "rolled back")
            detail["canary"] = None
        else:
            _start_canary(actor, deployment, canary)
            detail["canary"] = {"revision": deployment.canary.number, **canary, "version": None}
    if changes:
        raise _invalid(sorted(changes)[0], "This field cannot be changed.")
    deployment.save()
    record(actor, "deployment.updated", deployment, project=deployment.project, detail=detail)
    routing.publish()
    request_reconcile()
    return deployment


def _start_canary(actor: Actor, deployment: Deployment, canary: dict) -> None:
    percent = canary.get("percent", 10)
    if not 0 <= percent <= 100:
        raise _invalid("canary", "percent must be between 0 and 100.")
    replicas = canary.get("replicas", 1)
    if not 1 <= replicas <= MAX_REPLICAS:
        raise _invalid("canary", f"replicas must be between 1 and {MAX_REPLICAS}.")
    current = deployment.revision
    assert current is not None
    version = canary.get("version") or current.model_version
    merged = {**current.config, **(canary.get("config") or {})}
    if deployment.canary_id:
        existing = deployment.canary
        if existing.model_version_id == version.pk and existing.config == merged:
            deployment.canary_percent, deployment.canary_replicas = percent, replicas
            add_event(deployment, f"Canary {_describe(existing)} now takes {percent}%.")
            return
        raise Conflict("A canary is running: promote it or roll it back first.", "canary")
    _check_config(merged, deployment.project)
    revision = _new_revision(actor, deployment, version, merged)
    deployment.canary = revision
    deployment.canary_percent, deployment.canary_replicas = percent, replicas
    add_event(deployment, f"Canary {_describe(revision)} started for {percent}% of requests.")


def _end_canary(deployment: Deployment, how: str) -> None:
    if not deployment.canary_id:
        raise Conflict(f"Deployment {deployment.name} has no canary.", "canary")
    add_event(deployment, f"Canary {_describe(deployment.canary)} {how}.")
    deployment.canary = None
    deployment.canary_percent = 0


@transaction.atomic
def promote_canary(actor: Actor, deployment: Deployment) -> Deployment:
    """The canary revision becomes the deployment's: its replicas stay, the others are
    replaced as the new ones come up."""
    deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
    require_role(actor, deployment.project, Role.MEMBER)
    if not deployment.canary_id:
        raise Conflict(f"Deployment {deployment.name} has no canary to promote.", "canary")
    revision = deployment.canary
    _end_canary(deployment, "promoted: it now takes all requests")
    deployment.revision = revision
    deployment.gpus_per_replica = revision.config["gpus_per_replica"]
    deployment.cpus_per_replica = revision.config["cpus_per_replica"]
    deployment.save()
    record(
        actor,
        "deployment.promoted",
        deployment,
        project=deployment.project,
        detail={"revision": revision.number},
    )
    routing.publish()
    request_reconcile()
    return deployment


@transaction.atomic
def rollback_canary(actor: Actor, deployment: Deployment) -> Deployment:
    """Stop the canary: its replicas drain; every request goes to the current revision."""
    return update_deployment(actor, deployment, canary=None)


@transaction.atomic
def delete_deployment(actor: Actor, deployment: Deployment) -> Deployment:
    """Take it out of the gateway at once, drain its replicas (requests in flight finish),
    then it is gone."""
    deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
    require_role(actor, deployment.project, Role.MEMBER)
    if deployment.state in DEPLOYMENT_GONE:
        return deployment
    deployment.state = DeploymentState.DELETING
    deployment.reason = "Draining its replicas."
    deployment.save(update_fields=["state", "reason", "updated_at"])
    record(actor, "deployment.deleted", deployment, project=deployment.project)
    add_event(deployment, "Deleting: draining its replicas.")
    routing.publish()
    request_reconcile()
    return deployment


def wake(deployment_id: int) -> bool:
    """A request arrived for a deployment scaled to zero: start a replica (the gateway
    calls this, then waits for it)."""
    woke = Deployment.objects.filter(pk=deployment_id, replicas=0).update(
        wake_requested_at=timezone.now()
    )
    if woke:
        degraded.best_effort(
            lambda: current_app.send_task(RECONCILE_TASK, queue=settings.CONTROL_QUEUE, retry=False)
        )
    return bool(woke)
