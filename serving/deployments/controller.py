"""The deployment controller: one pass makes every deployment's replicas match what it
asks for. It runs every ``CP_SERVING_RECONCILE_INTERVAL`` seconds (Celery beat) and after
each change a user makes.

For each deployment, under its row lock:

1. **Observe** each replica from its job (the job is the replica's life: the scheduler
   placed it, its worker runs it, a crash restarts it with backoff, a lost host's replica
   is placed again elsewhere): PENDING, STARTING, READY (its workload reported an
   endpoint), DRAINING, STOPPED or FAILED; every change becomes a deployment event.
2. **Measure**: the ready replicas' own metrics (``stats``), live and as history.
3. **Autoscale** between min and max on the requests in flight (``autoscale``).
4. **Roll out**: the wanted revision(s) get their replica counts; replicas of other
   revisions drain only as new ones become ready, one surge replica at a time (no
   request lands on a missing replica: a new one is READY before an old one drains).
5. **Summarize** the deployment's state and reason.

Draining a replica takes it out of the routing table first, then cancels its job: the
replica gets SIGTERM, finishes what it is serving and exits.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from controlplane.tenancy.services import Actor
from jobs import storage
from jobs.models import Attempt, AttemptNode
from jobs.services import cancel_job, create_internal_job
from jobs.states import AttemptState, JobKind, JobState
from serving.deployments import autoscale, energy, routing, stats
from serving.deployments.config import replica_args
from serving.deployments.services import add_event
from serving.models import (
    REPLICA_LIVE,
    Deployment,
    DeploymentRevision,
    DeploymentState,
    Replica,
    ReplicaState,
)

log = logging.getLogger(__name__)
SURGE = 1  # replicas beyond the wanted count while a revision rolls out
REPLICA_MODULE = ["python", "-m", "serving.replica"]


@dataclass
class Seen:
    """What the database says about a replica's job right now."""

    state: str
    attempt: Attempt | None
    node: AttemptNode | None


def _seen(replica: Replica) -> Seen:
    job = replica.job
    attempt = job.attempts.order_by("-number").first()
    node = attempt.nodes.filter(rank=0).first() if attempt else None
    ready = (
        attempt is not None
        and attempt.state == AttemptState.RUNNING
        and not attempt.stop_requested
        and node is not None
        and node.endpoint != ""
    )
    if job.is_terminal():
        failed = job.state == JobState.FAILED and replica.state != ReplicaState.DRAINING
        state = ReplicaState.FAILED if failed else ReplicaState.STOPPED
    elif replica.state == ReplicaState.DRAINING:
        state = ReplicaState.DRAINING
    elif job.state == JobState.PENDING:
        state = ReplicaState.PENDING
    else:
        state = ReplicaState.READY if ready else ReplicaState.STARTING
    return Seen(state=state, attempt=attempt, node=node)


def sync_replica(replica: Replica, now) -> bool:
    """Bring the replica's row up to date with its job; record what changed as events.
    Returns whether its routing-relevant state changed."""
    replica.job.refresh_from_db()
    seen = _seen(replica)
    before, attempt = replica.state, seen.attempt
    dep = replica.deployment
    name = f"r{replica.number}"
    fields: list[str] = []
    if attempt is not None and attempt.number != replica.attempt:
        if replica.attempt:  # the attempt it had ended: crashed, lost or preempted
            ended = replica.job.attempts.filter(number=replica.attempt).first()
            if ended is not None and ended.state != AttemptState.CANCELLED:
                add_event(
                    dep,
                    f"{name} attempt {ended.number} ended {ended.state.lower()}"
                    f" ({ended.reason or 'no reason given'}); {replica.job.reason}",
                    "warning",
                )
        replica.attempt = attempt.number
        fields.append("attempt")
    if seen.state != before:
        replica.state = seen.state
        fields.append("state")
        node = seen.node
        if seen.state == ReplicaState.STARTING and node is not None:
            replica.worker_name = node.worker_name
            fields.append("worker_name")
            add_event(dep, f"{name} placed on {node.worker_name}: loading its model.")
        elif seen.state == ReplicaState.READY and node is not None:
            replica.endpoint = node.endpoint
            replica.worker_name = node.worker_name
            replica.ready_at = node.ready_at or now
            started = node.claimed_at or replica.ready_at
            replica.cold_start_seconds = max(0.0, (replica.ready_at - started).total_seconds())
            fields += ["endpoint", "worker_name", "ready_at", "cold_start_seconds"]
            info = node.ready_info or {}
            parts = [f"{replica.cold_start_seconds:.1f} s after it was started"]
            if "load_seconds" in info:
                parts.append(
                    f"load {float(info['load_seconds']):.1f} s, "
                    f"warm-up {float(info.get('warmup_seconds') or 0):.1f} s"
                )
            add_event(dep, f"{name} ready at {node.endpoint} ({'; '.join(parts)}).")
        elif seen.state == ReplicaState.PENDING and before in (
            ReplicaState.STARTING,
            ReplicaState.READY,
        ):
            add_event(dep, f"{name} is waiting to be placed again: {replica.job.reason}", "warning")
        elif seen.state == ReplicaState.FAILED:
            replica.stopped_at = now
            fields.append("stopped_at")
            add_event(dep, f"{name} failed: {replica.job.reason}", "error")
            revision = replica.revision
            ever_ready = Replica.objects.filter(revision=revision, ready_at__isnull=False).exists()
            if not ever_ready and not revision.broken:
                revision.broken = (replica.job.reason or "its replicas fail to start")[:300]
                revision.save(update_fields=["broken"])
        elif seen.state == ReplicaState.STOPPED:
            replica.stopped_at = now
            fields.append("stopped_at")
            add_event(dep, f"{name} stopped.")
    if fields:
        replica.save(update_fields=fields)
    routed = (before == ReplicaState.READY) != (replica.state == ReplicaState.READY)
    return routed or (replica.state == ReplicaState.READY and "attempt" in fields)


def start_replica(dep: Deployment, revision: DeploymentRevision) -> Replica:
    number = (dep.replica_set.aggregate(n=Max("number"))["n"] or 0) + 1
    version = revision.model_version
    storage.share_read_only(Path(version.path))
    config = revision.config
    args = replica_args(config, version.path, dep.name, settings.JOB_STOP_GRACE_SECONDS)
    job = create_internal_job(
        Actor.system(),
        dep.project,
        kind=JobKind.REPLICA,
        name=f"{dep.name}-r{number}",
        entrypoint=REPLICA_MODULE,
        args=args,
        gpus=int(config.get("gpus_per_replica") or 0),
        cpu_slots=int(config.get("cpus_per_replica") or 1),
        priority=dep.priority,
        max_restarts=settings.SERVING_REPLICA_MAX_RESTARTS,
        mounts=[version.path],
        spec={
            "kind": JobKind.REPLICA,
            "deployment": dep.name,
            "revision": revision.number,
            "model": f"{version.model.name} v{version.version}",
            "config": config,
        },
    )
    replica = Replica.objects.create(deployment=dep, revision=revision, number=number, job=job)
    add_event(dep, f"r{number} created for revision {revision.number} (job #{job.pk}).")
    return replica


def drain(replica: Replica, why: str) -> None:
    """Out of the routing table now; its job is cancelled: SIGTERM, in-flight requests
    finish, then it exits."""
    replica.state = ReplicaState.DRAINING
    replica.save(update_fields=["state"])
    add_event(replica.deployment, f"r{replica.number} draining: {why}.")
    if not replica.job.is_terminal():
        cancel_job(Actor.system(), replica.job)


def _rollout(dep: Deployment, live: list[Replica], wants: dict[int, int]) -> bool:
    """Start and drain replicas toward ``wants`` (revision id -> count). Returns whether
    anything changed."""
    changed = False
    serving = [r for r in live if r.state != ReplicaState.DRAINING]
    revisions = {r.pk: r for r in DeploymentRevision.objects.filter(pk__in=list(wants))}
    for rev_id, want in wants.items():
        mine = [r for r in serving if r.revision_id == rev_id]
        if len(mine) > want:  # scale down: the not-yet-ready first, then the newest
            mine.sort(key=lambda r: (r.state == ReplicaState.READY, -r.number))
            for replica in mine[: len(mine) - want]:
                drain(replica, "scaled down")
                serving.remove(replica)
                changed = True
    stale = [r for r in serving if r.revision_id not in wants]
    for replica in [r for r in stale if r.state != ReplicaState.READY]:
        drain(replica, "its revision was replaced")
        serving.remove(replica)
        stale.remove(replica)
        changed = True
    total = sum(wants.values())
    ready_new = sum(1 for r in serving if r.revision_id in wants and r.state == ReplicaState.READY)
    excess = ready_new + len(stale) - total
    for replica in sorted(stale, key=lambda r: r.number)[: max(0, excess)]:
        drain(replica, "a replica of the new revision is ready")
        serving.remove(replica)
        stale.remove(replica)
        changed = True
    for rev_id, want in wants.items():
        revision = revisions[rev_id]
        if revision.broken:
            continue
        mine = [r for r in serving if r.revision_id == rev_id]
        while len(mine) < want and (not stale or len(serving) < total + SURGE):
            replica = start_replica(dep, revision)
            mine.append(replica)
            serving.append(replica)
            changed = True
    return changed


def _summary(dep: Deployment, live: list[Replica], wants: dict[int, int]) -> tuple[str, str]:
    total = sum(wants.values())
    ready = [r for r in live if r.state == ReplicaState.READY]
    stable = dep.revision
    assert stable is not None
    ready_stable = sum(1 for r in ready if r.revision_id == stable.pk)
    if total == 0 and not live:
        return DeploymentState.IDLE, "Scaled to zero: the next request starts a replica."
    if stable.broken:
        if not ready:
            return DeploymentState.FAILED, f"Its replicas cannot start: {stable.broken}"[:300]
        return (
            DeploymentState.UPDATING,
            f"Revision {stable.number} cannot start ({stable.broken}); the previous one "
            "keeps serving: roll out another version."[:300],
        )
    stale = [r for r in live if r.revision_id not in wants]
    if ready_stable >= wants.get(stable.pk, 0) and not stale and len(ready) >= total:
        return DeploymentState.READY, f"{len(ready)} replica(s) ready."
    waiting = [r for r in live if r.state in (ReplicaState.PENDING, ReplicaState.STARTING)]
    why = ""
    if waiting:
        first = waiting[0]
        what = "loading" if first.state == ReplicaState.STARTING else first.job.reason
        why = f" r{first.number}: {what}"
    if not ready:
        return DeploymentState.DEPLOYING, f"Waiting for {total} replica(s).{why}"[:300]
    return (
        DeploymentState.UPDATING,
        f"{len(ready)} ready, {total} wanted (revision {stable.number}).{why}"[:300],
    )


def _autoscale(dep: Deployment, live_figures: dict, now: float, settled: bool) -> None:
    woken = bool(dep.wake_requested_at)
    decision = autoscale.decide(
        current=dep.replicas,
        low=dep.min_replicas,
        high=dep.max_replicas,
        ongoing=float(live_figures.get("in_flight") or 0.0),
        served=float(live_figures.get("requests") or 0.0),
        config=dep.autoscaling,
        memory=dep.scaler,
        now=now,
        woken=woken,
        settled=settled,
    )
    if decision.why:
        add_event(dep, decision.why)
    dep.replicas = decision.replicas
    dep.scaler = decision.memory
    if woken and dep.replicas > 0:
        dep.wake_requested_at = None


def reconcile(deployment_id: int, samples: dict[int, stats.Sample], now=None) -> bool:
    """One pass over one deployment. Returns whether the routing table changed."""
    now = now or timezone.now()
    clock = time.time()
    with transaction.atomic():
        dep = (
            Deployment.objects.select_for_update(of=("self",))
            .select_related("project", "revision__model_version__model")
            .filter(pk=deployment_id)
            .first()
        )
        if dep is None or dep.state == DeploymentState.DELETED:
            return False
        replicas = list(
            dep.replica_set.filter(state__in=REPLICA_LIVE).select_related("job", "revision")
        )
        changed = False
        for replica in replicas:
            replica.deployment = dep
            changed |= sync_replica(replica, now)
        live = [r for r in replicas if r.state in REPLICA_LIVE]
        ready = [r for r in live if r.state == ReplicaState.READY]
        figures = stats.update(
            dep.pk, {r.pk: samples[r.pk] for r in ready if r.pk in samples}, len(ready), clock
        )
        if dep.state == DeploymentState.DELETING:
            for replica in live:
                if replica.state != ReplicaState.DRAINING:
                    drain(replica, "the deployment is being deleted")
                    changed = True
            if not any(r.state in REPLICA_LIVE and not r.job.is_terminal() for r in live):
                dep.state, dep.reason = DeploymentState.DELETED, "Deleted."
                add_event(dep, "Deleted: every replica has stopped.")
            dep.save(update_fields=["state", "reason", "updated_at"])
            return changed
        if dep.autoscaled or dep.wake_requested_at:
            stable = [r for r in ready if r.revision_id == dep.revision_id]
            figures_stable = dict(figures)
            if len(stable) != len(ready) and ready:
                share = len(stable) / len(ready)
                figures_stable["in_flight"] = figures.get("in_flight", 0.0) * share
            settled = len(stable) >= dep.replicas
            _autoscale(dep, figures_stable, clock, settled)
        wants = {dep.revision_id: dep.replicas}
        if dep.canary_id:
            wants[dep.canary_id] = dep.canary_replicas
        changed |= _rollout(dep, live, wants)
        live = [r for r in live if r.state in REPLICA_LIVE]
        dep.state, dep.reason = _summary(dep, live, wants)
        dep.save(
            update_fields=[
                "state",
                "reason",
                "replicas",
                "scaler",
                "wake_requested_at",
                "updated_at",
            ]
        )
        counts: dict[str, int] = {}
        for replica in live:
            counts[replica.state] = counts.get(replica.state, 0) + 1
        frame = {"type": "stats", "deployment": dep.pk, "state": dep.state, "reason": dep.reason,
                 "wanted": dep.replicas, "replicas": counts, **figures}  # fmt: skip
    frame["energy"] = energy.energy(deployment_id, figures.get("tokens_total", 0.0))
    frame["devices"] = energy.devices(live)
    stats.broadcast(deployment_id, frame)
    return changed


def reconcile_all() -> dict:
    """One pass over every deployment; tells the gateways when routing changed."""
    ids = list(
        Deployment.objects.exclude(state=DeploymentState.DELETED).values_list("pk", flat=True)
    )
    targets = dict(
        Replica.objects.filter(deployment_id__in=ids, state=ReplicaState.READY)
        .exclude(endpoint="")
        .values_list("pk", "endpoint")
    )
    samples = stats.scrape(targets)
    changed = False
    for deployment_id in ids:
        try:
            changed |= reconcile(deployment_id, samples)
        except Exception:
            log.exception("reconciling deployment %s failed", deployment_id)
    if changed:
        routing.publish_now()
    return {"deployments": len(ids), "scraped": len(samples), "routing_changed": changed}


def on_replica_event(job_id: int) -> None:
    """A replica's job changed (ready, or an attempt ended): bring it up to date now
    rather than at the next pass, and tell the gateways."""
    replica = Replica.objects.filter(job_id=job_id).select_related("deployment").first()
    if replica is None:
        return
    with transaction.atomic():
        Deployment.objects.select_for_update().filter(pk=replica.deployment_id).first()
        replica = (
            Replica.objects.select_related("job", "revision", "deployment")
            .filter(pk=replica.pk, state__in=REPLICA_LIVE)
            .first()
        )
        if replica is None:
            return
        sync_replica(replica, timezone.now())
    routing.publish_now()
