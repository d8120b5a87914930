"""An attempt's life on the database side: claim, lease renewal, exit, and the reaper.

Every write from a worker is conditional on its claim (the fencing token it got when it
claimed the node): a worker that lost its lease, or a duplicate start message, changes
nothing. An attempt ends only when each of its nodes has exited or been given up on (lease
expired), so a job never has processes of two attempts at once.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from celery import current_app
from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from controlplane import degraded
from controlplane.cluster import services as cluster
from controlplane.cluster.models import Worker
from jobs import events, signals, storage
from jobs.attempt_auth import ATTEMPT_TOKEN_PREFIX
from jobs.attempt_auth import digest as attempt_token_digest
from jobs.models import Attempt, AttemptNode, Job, NodeState, Reservation
from jobs.states import ATTEMPT_LIVE, AttemptState, JobKind, JobState, StopReason

log = logging.getLogger(__name__)
TICK_TASK = "jobs.tick"

_FINAL_STATE = {
    StopReason.CANCEL: AttemptState.CANCELLED,
    StopReason.PREEMPT: AttemptState.PREEMPTED,
    StopReason.DRAIN: AttemptState.PREEMPTED,
    StopReason.RUNTIME: AttemptState.FAILED,
    StopReason.PEER_FAILED: AttemptState.FAILED,
    StopReason.LOST: AttemptState.LOST,
    StopReason.NOT_STARTED: AttemptState.LOST,
    StopReason.ENVIRONMENT: AttemptState.FAILED,
}


def request_tick() -> None:
    """Ask for a scheduler pass after this transaction commits. Best effort: with the
    broker away the periodic pass (Celery beat) places the job once it is back."""
    transaction.on_commit(
        lambda: degraded.best_effort(
            lambda: current_app.send_task(TICK_TASK, queue=settings.CONTROL_QUEUE, retry=False)
        )
    )


def lease_until(now=None):
    return (now or timezone.now()) + timedelta(seconds=settings.JOB_LEASE_SECONDS)


@dataclass
class NodePlan:
    """What a worker needs to start its node of an attempt."""

    node_id: int
    claim: str
    token: str
    job_id: int
    project_id: int
    attempt_id: int
    attempt: int
    rank: int
    nodes: int
    procs_per_node: int
    gpu_indices: list[int]
    entrypoint: list[str]
    args: list[str]
    env: dict[str, str]
    code_dir: str
    resume_from: str
    checkpoint_dir: str
    work_dir: str
    environment: dict  # the spec's environment section ({} for the worker's own)
    kind: str = JobKind.TRAINING
    mounts: list[str] | None = None  # server paths the workload may read
    service_key: str = ""  # a service (replica) requires it from its callers
    output_dir: str = ""  # the job's outputs: kept after it ends (CP_OUTPUT_DIR)
    outputs: list[str] | None = None  # working-directory dirs kept as outputs at the end


def claim_node(attempt_id: int, rank: int, worker_name: str) -> NodePlan | None:
    """Claim a node of an attempt for this worker; None when it is not (or no longer) ours."""
    now = timezone.now()
    claim = uuid.uuid4().hex
    token = ATTEMPT_TOKEN_PREFIX + secrets.token_urlsafe(32)
    service_key = secrets.token_urlsafe(24)
    with transaction.atomic():
        claimed = AttemptNode.objects.filter(
            attempt_id=attempt_id,
            rank=rank,
            worker_name=worker_name,
            state=NodeState.WAITING,
            attempt__state__in=ATTEMPT_LIVE,
            attempt__stop_requested="",
        ).update(
            state=NodeState.RUNNING,
            claim=claim,
            claimed_at=now,
            lease_expires_at=lease_until(now),
            token_digest=attempt_token_digest(token),
            service_key=service_key,
            endpoint="",
            ready_at=None,
        )
        if claimed != 1:
            return None
        node = AttemptNode.objects.select_related("attempt__job").get(
            attempt_id=attempt_id, rank=rank
        )
        attempt, job = node.attempt, node.attempt.job
        if attempt.state == AttemptState.SCHEDULED:
            Attempt.objects.filter(pk=attempt.pk, state=AttemptState.SCHEDULED).update(
                state=AttemptState.RUNNING, started_at=now
            )
        if job.state == JobState.SCHEDULED:
            job = Job.objects.select_for_update().get(pk=job.pk)
            if job.state == JobState.SCHEDULED:
                job.save(
                    update_fields=job.move_to(
                        JobState.RUNNING, started_at=job.started_at or now, reason=""
                    )
                )
                events.job_changed(job)
    return NodePlan(
        node_id=node.pk,
        claim=claim,
        token=token,
        job_id=job.pk,
        project_id=job.project_id,
        attempt_id=attempt.pk,
        attempt=attempt.number,
        rank=rank,
        nodes=job.nodes,
        procs_per_node=job.procs_per_node,
        gpu_indices=list(node.gpu_indices),
        entrypoint=list(job.entrypoint),
        args=list(job.args),
        env=dict(job.env),
        code_dir=job.code_dir,
        resume_from=attempt.resume_from,
        checkpoint_dir=str(storage.checkpoint_root(job.pk)),
        work_dir=str(storage.work_dir(job.pk, attempt.number, rank)),
        environment=dict((job.spec or {}).get("environment") or {}),
        kind=job.kind,
        mounts=list(job.mounts or []),
        service_key=service_key if job.kind == JobKind.REPLICA else "",
        output_dir=str(storage.output_root(job.pk)),
        outputs=list((job.spec or {}).get("outputs", ["outputs"])),
    )


def publish_master(attempt_id: int, address: str, port: int) -> None:
    """Rank 0 tells the other nodes where to rendezvous."""
    Attempt.objects.filter(pk=attempt_id).update(master_addr=address, master_port=port)


def master_of(attempt_id: int) -> tuple[str, int] | None:
    """The rendezvous address rank 0 published, once it has."""
    row = (
        Attempt.objects.filter(pk=attempt_id)
        .values_list("master_addr", "master_port", "state")
        .first()
    )
    if row is None or row[2] not in ATTEMPT_LIVE or not row[1]:
        return None
    return row[0], row[1]


def record_environment(node_id: int, claim: str, environment: dict) -> None:
    """What the node runs in (rank 0's is the attempt's): venv key and packages, or image."""
    node = AttemptNode.objects.filter(pk=node_id, claim=claim).values("attempt_id", "rank").first()
    if node is not None and node["rank"] == 0:
        Attempt.objects.filter(pk=node["attempt_id"]).update(environment=environment)


def set_pid(node_id: int, claim: str, pid: int) -> None:
    AttemptNode.objects.filter(pk=node_id, claim=claim).update(pid=pid)


def set_pids(node_id: int, claim: str, pids: list[int]) -> None:
    """The processes of the node's job (for per-process GPU telemetry attribution)."""
    AttemptNode.objects.filter(pk=node_id, claim=claim).update(pids=sorted(pids))


def record_ready(node_id: int, claim: str, endpoint: str, info: dict | None = None) -> bool:
    """A service node's workload is ready for traffic at ``endpoint`` (fenced by the claim);
    its watchers hear of it after commit (``signals.node_ready``)."""
    with transaction.atomic():
        done = AttemptNode.objects.filter(
            pk=node_id, claim=claim, state=NodeState.RUNNING, attempt__state__in=ATTEMPT_LIVE
        ).update(endpoint=endpoint[:255], ready_at=timezone.now(), ready_info=info or {})
        if not done:
            return False
        job_id = AttemptNode.objects.filter(pk=node_id).values_list("attempt__job_id", flat=True)[0]
        transaction.on_commit(
            lambda: signals.node_ready.send(sender=AttemptNode, job_id=job_id, node_id=node_id)
        )
    return True


def restart_backoff(restarts: int) -> float:
    """Seconds a job waits before its ``restarts``-th restart after a failure: doubling
    from ``CP_JOB_RESTART_BACKOFF``, at most ``CP_JOB_RESTART_BACKOFF_MAX``."""
    if restarts <= 1:
        return 0.0 if restarts < 1 else settings.JOB_RESTART_BACKOFF
    return min(settings.JOB_RESTART_BACKOFF_MAX, settings.JOB_RESTART_BACKOFF * 2 ** (restarts - 1))


@dataclass
class Lease:
    held: bool  # False: fenced (the attempt ended or another run owns the node): stop now
    stop: str  # a StopReason when the control plane asks the node to stop, else ""


def renew(node_id: int, claim: str) -> Lease:
    """Extend the node's lease; tells the worker whether to go on."""
    held = AttemptNode.objects.filter(
        pk=node_id, claim=claim, state=NodeState.RUNNING, attempt__state__in=ATTEMPT_LIVE
    ).update(lease_expires_at=lease_until())
    if not held:
        return Lease(held=False, stop="")
    stop = (
        Attempt.objects.filter(nodes__pk=node_id).values_list("stop_requested", flat=True).first()
    )
    return Lease(held=True, stop=stop or "")


#: (node id, claim): the fencing token a write from a running node carries.
Fence = tuple[int, str]


def holds(fence: Fence | None) -> bool:
    """Whether the run that holds ``fence`` still owns its node (None: no node wrote it,
    e.g. the control plane itself). Call it inside the write's transaction: it locks the
    node's row, so the reaper cannot give the node up between the check and the write."""
    if fence is None:
        return True
    node_id, claim = fence
    return (
        AttemptNode.objects.select_for_update(of=("self",))
        .filter(pk=node_id, claim=claim, state=NodeState.RUNNING, attempt__state__in=ATTEMPT_LIVE)
        .values_list("pk", flat=True)
        .first()
        is not None
    )


def request_stop(node_id: int, claim: str, reason: str) -> None:
    """A node asks its whole attempt to stop (its worker is shutting down)."""
    Attempt.objects.filter(
        nodes__pk=node_id, nodes__claim=claim, state__in=ATTEMPT_LIVE, stop_requested=""
    ).update(stop_requested=reason)


def finish_node(
    node_id: int, claim: str, exit_code: int | None, detail: str = "", stop_reason: str = ""
) -> None:
    """The node's processes exited with ``exit_code`` (``stop_reason``: why the node itself
    gave up, e.g. its environment could not be built)."""
    now = timezone.now()
    with transaction.atomic():
        done = AttemptNode.objects.filter(pk=node_id, claim=claim, state=NodeState.RUNNING).update(
            state=NodeState.EXITED, exit_code=exit_code, finished_at=now
        )
        if not done:
            return  # fenced: the reaper or another run already settled it
        node = AttemptNode.objects.select_related("attempt").get(pk=node_id)
        Reservation.objects.filter(node=node).delete()
        attempt = Attempt.objects.select_for_update().get(pk=node.attempt_id)
        if attempt.state not in ATTEMPT_LIVE:
            return
        if exit_code != 0 and not attempt.stop_requested:
            attempt.stop_requested = stop_reason or StopReason.PEER_FAILED
            attempt.exit_code = exit_code
            attempt.reason = (
                detail or f"node {node.rank} on {node.worker_name} exited with code {exit_code}"
            )[:300]
            attempt.save(update_fields=["stop_requested", "exit_code", "reason"])
        settle(attempt, now)


def _give_up_on(node: AttemptNode, attempt: Attempt, why: str, now, reason: str) -> None:
    """Mark a node that will never report (lease expired, never started) as gone."""
    AttemptNode.objects.filter(pk=node.pk).update(state=NodeState.EXITED, finished_at=now)
    Reservation.objects.filter(node=node).delete()
    if not attempt.stop_requested:
        attempt.stop_requested = reason
        attempt.reason = why[:300]
        attempt.save(update_fields=["stop_requested", "reason"])
    elif attempt.stop_requested == StopReason.PEER_FAILED and reason == StopReason.LOST:
        # A peer exited first because this node's host went away (its collective broke):
        # the attempt was lost with that host, and its reason names the host.
        attempt.stop_requested = reason
        attempt.reason = f"{why}; then {attempt.reason}"[:300]
        attempt.save(update_fields=["stop_requested", "reason"])


def settle(attempt: Attempt, now) -> None:
    """End the attempt once no node of it can still be running. Caller holds its row lock."""
    nodes = list(attempt.nodes.all())
    if attempt.stop_requested:
        unstarted = [n for n in nodes if n.state == NodeState.WAITING]
        if unstarted:  # fence them: a late start message finds nothing to claim
            AttemptNode.objects.filter(pk__in=[n.pk for n in unstarted]).update(
                state=NodeState.EXITED, finished_at=now
            )
            Reservation.objects.filter(node__in=unstarted).delete()
            for node in unstarted:
                node.state = NodeState.EXITED
    if any(n.state != NodeState.EXITED for n in nodes):
        return
    if attempt.stop_requested:
        state = _FINAL_STATE[StopReason(attempt.stop_requested)]
    else:
        state = AttemptState.SUCCEEDED
    _finalize(attempt, state, now)


def _finalize(attempt: Attempt, state: str, now) -> None:
    attempt.state = state
    attempt.finished_at = now
    if state == AttemptState.SUCCEEDED:
        attempt.exit_code = 0
    attempt.save(update_fields=["state", "finished_at", "exit_code"])
    Reservation.objects.filter(attempt=attempt).delete()
    job_id, attempt_id = attempt.job_id, attempt.pk
    transaction.on_commit(
        lambda: signals.attempt_finished.send(
            sender=Attempt, job_id=job_id, attempt_id=attempt_id, state=state
        )
    )
    job = Job.objects.select_for_update().get(pk=attempt.job_id)
    if job.is_terminal():
        return
    stop = attempt.stop_requested
    if state == AttemptState.SUCCEEDED:
        fields = job.move_to(JobState.SUCCEEDED, exit_code=0, finished_at=now, reason="")
        job_id = job.pk
        transaction.on_commit(lambda: signals.job_succeeded.send(sender=Job, job_id=job_id))
    elif state == AttemptState.CANCELLED:
        fields = job.move_to(JobState.CANCELLED, finished_at=now, reason="Cancelled.")
    elif state == AttemptState.PREEMPTED:
        why = "its worker shut down" if stop == StopReason.DRAIN else "preempted"
        fields = job.move_to(
            JobState.PENDING,
            preemptions=job.preemptions + 1,
            reason=f"Attempt {attempt.number} {why}; it resumes from its last checkpoint.",
        )
    elif stop == StopReason.NOT_STARTED:
        # Its processes never ran (the host went away first): place it again, no restart.
        fields = job.move_to(
            JobState.PENDING,
            reason=f"Attempt {attempt.number} was never started ({attempt.reason}); "
            "placing it again."[:300],
        )
    elif stop == StopReason.ENVIRONMENT:
        # Deterministic (the same requirements fail the same way): no restart loop.
        fields = job.move_to(
            JobState.FAILED,
            finished_at=now,
            exit_code=attempt.exit_code,
            reason=f"Its environment could not be built: {attempt.reason}"[:300],
        )
    elif stop == StopReason.RUNTIME:
        fields = job.move_to(
            JobState.FAILED,
            finished_at=now,
            exit_code=attempt.exit_code,
            reason=f"Stopped: it ran longer than its max_runtime of {job.max_runtime} s.",
        )
    elif job.restarts < job.max_restarts:
        # A lost host is not the job's fault: place it again at once. A failure waits,
        # doubling each time, so a crash loop does not spin.
        delay = 0.0 if state == AttemptState.LOST else restart_backoff(job.restarts + 1)
        wait = f" in {delay:g} s" if delay else ""
        fields = job.move_to(
            JobState.PENDING,
            restarts=job.restarts + 1,
            not_before=now + timedelta(seconds=delay) if delay else None,
            reason=(
                f"Attempt {attempt.number} {state.lower()}: {attempt.reason or 'no reason'}; "
                f"restart {job.restarts + 1} of {job.max_restarts}{wait}."
            )[:300],
        )
    else:
        fields = job.move_to(
            JobState.FAILED,
            finished_at=now,
            exit_code=attempt.exit_code,
            reason=(
                f"Attempt {attempt.number} {state.lower()}: {attempt.reason or 'no reason'}; "
                f"no restarts left ({job.max_restarts} allowed)."
            )[:300],
        )
    job.save(update_fields=fields)
    events.job_changed(job)
    request_tick()


def reap(now=None) -> int:
    """Settle attempts whose nodes stopped heartbeating or never started, and stop those
    past their max_runtime. Returns how many nodes were given up on."""
    now = now or timezone.now()
    given_up = 0
    expired = AttemptNode.objects.filter(
        state=NodeState.RUNNING, lease_expires_at__lt=now, attempt__state__in=ATTEMPT_LIVE
    ).values_list("pk", flat=True)
    waiting = AttemptNode.objects.filter(
        state=NodeState.WAITING, attempt__state__in=ATTEMPT_LIVE, attempt__stop_requested=""
    )
    never_started = waiting.filter(
        attempt__created_at__lt=now - timedelta(seconds=settings.JOB_START_TIMEOUT)
    ).values_list("pk", flat=True)
    # Placed on a host that went offline (or lost a lease) before it started the node:
    # place it again now rather than after CP_JOB_START_TIMEOUT.
    usable = Worker.objects.online(now).filter(suspect_since=None).values("pk")
    stranded = waiting.exclude(worker_id__in=usable).values_list("pk", flat=True)
    candidates = (
        [(pk, "lease") for pk in expired]
        + [(pk, "start") for pk in never_started]
        + [(pk, "host") for pk in stranded]
    )
    for node_id, why in candidates:
        try:
            given_up += _reap_one(node_id, why, now)
        except OperationalError as exc:
            # Its rows are locked (on PostgreSQL we wait at most REAP_LOCK_TIMEOUT): most
            # likely by the frozen host itself, mid-transaction. The others are not held up;
            # its session ends after CP_DB_IDLE_IN_TRANSACTION_TIMEOUT and a later pass
            # gives it up.
            log.warning("reaper: node %s is locked, left for the next pass (%s)", node_id, exc)
    _stop_overdue(now)
    return given_up


#: Seconds the reaper waits for one node's row locks before it moves on (PostgreSQL).
REAP_LOCK_TIMEOUT = 2.0


def _reap_one(node_id: int, why: str, now) -> int:
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('lock_timeout', %s, true)",
                    [f"{int(REAP_LOCK_TIMEOUT * 1000)}ms"],
                )
        node = AttemptNode.objects.select_related("attempt").get(pk=node_id)
        attempt = Attempt.objects.select_for_update().get(pk=node.attempt_id)
        node.refresh_from_db()
        if attempt.state not in ATTEMPT_LIVE or node.state == NodeState.EXITED:
            return 0
        if why in ("start", "host") and node.state != NodeState.WAITING:
            return 0  # claimed meanwhile
        if why == "lease" and (node.lease_expires_at is None or node.lease_expires_at >= now):
            return 0  # renewed meanwhile
        if why == "lease":
            message = (
                f"node {node.rank} on {node.worker_name} stopped renewing its lease (worker lost)"
            )
            # Until it heartbeats again, the host gets no new work (this job's included).
            cluster.mark_suspect(node.worker_name, now)
        elif why == "host":
            message = (
                f"node {node.rank} was never started: its host {node.worker_name} went "
                "offline or lost a lease first"
            )
        else:
            message = f"node {node.rank} was never started by {node.worker_name}"
        reason = StopReason.LOST if why == "lease" else StopReason.NOT_STARTED
        _give_up_on(node, attempt, message, now, reason)
        settle(attempt, now)
        return 1


def _stop_overdue(now) -> None:
    for attempt_id, started, limit in Attempt.objects.filter(
        state=AttemptState.RUNNING, stop_requested="", job__max_runtime__isnull=False
    ).values_list("pk", "started_at", "job__max_runtime"):
        if started is not None and started + timedelta(seconds=limit) < now:
            Attempt.objects.filter(pk=attempt_id, stop_requested="").update(
                stop_requested=StopReason.RUNTIME
            )


def remove_tree(path: str | Path, inside: Path) -> None:
    """Delete a directory, but only one inside ``inside`` (never anything else)."""
    target = Path(path)
    if storage.is_inside(target, inside) and target.resolve() != inside.resolve():
        shutil.rmtree(target, ignore_errors=True)
