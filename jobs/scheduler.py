"""The scheduler: one pass places PENDING jobs onto free GPUs (or CPU slots).

A pass runs in one transaction, under a lock (a PostgreSQL advisory lock; SQLite takes its
write lock at BEGIN), so two schedulers never book the same device; the unique constraint
on ``Reservation(worker, kind, index)`` makes that a database guarantee as well.

Order: priority (high first); within a priority, fair share (the project using the fewest
GPUs right now goes next, recomputed as the pass places jobs); then age. A job is placed
only when all its nodes fit at once (gang placement), each node on its own online host,
choosing the hosts it fits most tightly (best fit keeps big holes for big jobs).

Rules that keep big jobs from starving (documented in the README):

- **Reservation for the head job.** The first job of the pass that does not fit for lack
  of capacity reserves the hosts it would use (those closest to fitting it). Later jobs of
  the pass may only use other hosts (no backfill onto the reserved ones), so those hosts
  drain until the head job fits.
- **Preemption.** A job that does not fit may stop running jobs of *lower* priority to make
  room (only high priority preempts normal and low; normal preempts low). Victims get
  SIGTERM (a chance to checkpoint), go back to PENDING, resume later from their checkpoint,
  and are counted as preemptions, not restarts. While victims are stopping, their devices
  count as free-soon, so nothing else is preempted for the same job.

Quotas (``max_gpus``, ``max_concurrent_jobs`` of the project) are checked before
placement; a job over quota waits without blocking other projects.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

from celery import current_app
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from controlplane.tenancy.models import Project
from jobs import lifecycle
from jobs.models import Attempt, AttemptNode, Checkpoint, Job, NodeState, Reservation
from jobs.placement import (
    Host,
    Pending,
    Placement,
    fit,
    load_hosts,
    load_running,
    mark_stopping,
    reserve,
    victims,
    within_share,
)
from jobs.queues import PendingQueues, shape_of
from jobs.states import ATTEMPT_LIVE, JobKind, JobState, Priority, StopReason

log = logging.getLogger(__name__)
LOCK_KEY = 0x6370_5343  # "cpSC": the advisory lock of a scheduling pass
RUN_ATTEMPT_TASK = "workers.run_attempt"


@dataclass
class Decision:
    placed: list[int] = field(default_factory=list)  # attempt ids
    preempted: list[int] = field(default_factory=list)  # attempt ids asked to stop
    waiting: int = 0


def _lock() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])


def _quota_reason(job: Job, project: Project, gpus_used: int, jobs_running: int) -> str:
    """Why a job must wait for its project's quota ('' when it need not). Serving replicas
    count against the GPU quota, not the concurrent-jobs one."""
    if (
        project.max_concurrent_jobs is not None
        and jobs_running >= project.max_concurrent_jobs
        and job.kind != JobKind.REPLICA
    ):
        return (
            f"Waiting for quota: project {project.name} runs {jobs_running} of "
            f"{project.max_concurrent_jobs} concurrent jobs."
        )
    if project.max_gpus is not None and gpus_used + job.gpus > project.max_gpus:
        return (
            f"Waiting for quota: project {project.name} uses {gpus_used} of "
            f"{project.max_gpus} GPUs; this job needs {job.gpus}."
        )
    return ""


def _capacity_reason(job: Job) -> str:
    if job.gpus_per_node:
        what = f"{job.gpus_per_node} free GPU{'s' if job.gpus_per_node > 1 else ''}"
    else:
        what = f"{job.procs_per_node} free CPU slot{'s' if job.procs_per_node > 1 else ''}"
    hosts = f"{job.nodes} hosts" if job.nodes > 1 else "a host"
    return f"Waiting for {hosts} with {what}."


def _create_attempts(placements: list[Placement], now) -> list[Attempt]:
    """The attempts, nodes and reservations of a pass's placements, in a few bulk writes."""
    if not placements:
        return []
    job_ids = [p.job.pk for p in placements]
    numbers = dict(
        Attempt.objects.filter(job_id__in=job_ids)
        .values("job_id")
        .annotate(last=Max("number"))
        .values_list("job_id", "last")
    )
    resume: dict[int, str] = {}
    for job_id, path in (
        Checkpoint.objects.filter(job_id__in=job_ids)
        .order_by("job_id", "-step")
        .values_list("job_id", "path")
    ):
        resume.setdefault(job_id, path)
    attempts = Attempt.objects.bulk_create(
        [
            Attempt(
                job_id=p.job.pk,
                number=numbers.get(p.job.pk, 0) + 1,
                resume_from=resume.get(p.job.pk, ""),
                created_at=now,
            )
            for p in placements
        ]
    )
    if any(a.pk is None for a in attempts):  # a backend that cannot return ids
        by_job = dict(
            Attempt.objects.filter(job_id__in=job_ids, created_at=now).values_list("job_id", "pk")
        )
        for attempt in attempts:
            attempt.pk = attempt.id = by_job[attempt.job_id]
    nodes: list[AttemptNode] = []
    picks: list[list[int]] = []
    for placement, attempt in zip(placements, attempts, strict=True):
        gpu_job = placement.job.gpus_per_node > 0
        for rank, (host, picked) in enumerate(zip(placement.hosts, placement.devices, strict=True)):
            nodes.append(
                AttemptNode(
                    attempt=attempt,
                    rank=rank,
                    worker_id=host.id,
                    worker_name=host.name,
                    gpu_indices=picked if gpu_job else [],
                    cpu_slots=0 if gpu_job else len(picked),
                    sent_at=now,  # dispatched when this pass commits
                )
            )
            picks.append(picked)
    AttemptNode.objects.bulk_create(nodes)
    if any(n.pk is None for n in nodes):
        ids = {
            (a, r): pk
            for a, r, pk in AttemptNode.objects.filter(attempt__in=attempts).values_list(
                "attempt_id", "rank", "pk"
            )
        }
        for node in nodes:
            node.pk = node.id = ids[(node.attempt.pk, node.rank)]
    reservations = [
        Reservation(
            worker_id=node.worker_id,
            kind=Reservation.GPU if node.gpu_indices else Reservation.CPU,
            index=index,
            attempt=node.attempt,
            node=node,
        )
        for node, picked in zip(nodes, picks, strict=True)
        for index in picked
    ]
    Reservation.objects.bulk_create(reservations, batch_size=1000)
    Job.objects.filter(pk__in=job_ids, state=JobState.PENDING).update(
        state=JobState.SCHEDULED, reason="", updated_at=now
    )
    return attempts


def schedule(now=None) -> Decision:
    """One scheduling pass. Returns what it did; start messages go out after commit."""
    now = now or timezone.now()
    decision = Decision()
    with transaction.atomic():
        _lock()
        pending = PendingQueues(now)
        if not pending:
            return decision
        hosts = load_hosts(now)
        running = load_running()
        gpus_used: dict[int, int] = defaultdict(int)
        jobs_running: dict[int, int] = defaultdict(int)
        for run in running:
            gpus_used[run.project_id] += run.gpus
            jobs_running[run.project_id] += run.kind != JobKind.REPLICA
            if run.stopping:
                mark_stopping(run, hosts)
        projects = Project.objects.in_bulk(pending.project_ids())
        reserved_hosts: set[int] = set()
        usable = list(hosts.values())
        head: Pending | None = None
        failed_shapes: set[tuple] = set()
        reasons: dict[int, str] = {}
        placements: list[Placement] = []

        def wait(job: Pending, reason: str) -> None:
            if job.reason != reason:
                reasons[job.pk] = reason[:300]

        for job, queue in pending.ordered(gpus_used, lambda q: q.shape() in failed_shapes):
            quota = _quota_reason(
                job,
                projects[job.project_id],
                gpus_used[job.project_id],
                jobs_running[job.project_id],
            )
            if quota:
                # Usage only grows in a pass: the rest of this shape queue waits too.
                for same in [job, *queue.stop()]:
                    wait(same, quota)
                continue
            shape = shape_of(job.gpus_per_node, job.procs_per_node, job.nodes, job.image)
            if shape not in failed_shapes:
                chosen = fit(job, usable)
                if chosen is not None:
                    placements.append(reserve(job, chosen))
                    gpus_used[job.project_id] += job.gpus
                    jobs_running[job.project_id] += job.kind != JobKind.REPLICA
                    continue
                # Capacity only shrinks during a pass: this shape will not fit again.
                failed_shapes.add(shape)
            left = queue.stop()  # nor will the rest of this queue: they wait unread
            if head is not None:
                for same in [job, *left]:
                    wait(same, _behind_reason(same, head, hosts, shape))
                continue
            for same in left:  # behind the head job, of its own shape
                wait(same, _behind_reason(same, job, hosts, shape))
            # The head job: the first one that does not fit.
            head = job
            active = pending.project_ids() | {r.project_id for r in running}
            target = _make_room(job, usable, hosts, running, decision, wait, active)
            # Keep the head job's hosts for it: no backfill onto them.
            reserved_hosts = {h.id for h in target}
            usable = [h for h in hosts.values() if h.id not in reserved_hosts]

        # Every pending job not placed waits, read or not (stopped queues are not read).
        decision.waiting = pending.total - len(placements)
        attempts = _create_attempts(placements, now)
        decision.placed = [a.pk for a in attempts]
        if decision.preempted:
            Attempt.objects.filter(pk__in=decision.preempted, stop_requested="").update(
                stop_requested=StopReason.PREEMPT
            )
            for victim in Attempt.objects.select_for_update().filter(pk__in=decision.preempted):
                lifecycle.settle(victim, now)  # a victim that never started ends at once
        by_reason: dict[str, list[int]] = defaultdict(list)
        for pk, reason in reasons.items():
            by_reason[reason].append(pk)
        for reason, ids in by_reason.items():  # few distinct reasons: one UPDATE each
            for start in range(0, len(ids), 900):
                Job.objects.filter(pk__in=ids[start : start + 900]).update(reason=reason)
        placed = decision.placed
        transaction.on_commit(lambda: _dispatch(placed))
        if placements:
            placed_jobs = [p.job.pk for p in placements]
            transaction.on_commit(lambda: _announce(placed_jobs))
    if decision.placed or decision.preempted:
        log.info(
            "scheduled %d attempt(s), preempting %d, %d waiting",
            len(decision.placed),
            len(decision.preempted),
            decision.waiting,
        )
    return decision


_behind_cache: dict[tuple, str] = {}


def _behind_reason(job: Pending, head: Pending, hosts: dict[int, Host], shape: tuple) -> str:
    """Why a job waits once the head job is chosen (one answer per job shape)."""
    key = (head.pk, shape, id(hosts))
    if key not in _behind_cache:
        if len(_behind_cache) > 10_000:
            _behind_cache.clear()
        fits_anywhere = fit(job, list(hosts.values())) is not None
        _behind_cache[key] = (
            f"Waiting behind job #{head.pk}, which has hosts set aside for it."
            if fits_anywhere
            else _capacity_reason(job)
        )
    return _behind_cache[key]


def _make_room(job, usable, hosts, running, decision, wait, active) -> list[Host]:
    """For the head job: wait for stopping jobs, preempt lower-priority ones (its own
    project's, or another's above its fair share), or just wait. Returns the hosts to set
    aside for it."""
    gpu_job = job.gpus_per_node > 0
    soon = {h.id: h.soon(gpu_job) for h in usable}
    target = fit(job, usable, soon) if any(soon.values()) else None
    if target is not None:
        wait(job, "Waiting for preempted jobs to stop.")
    elif job.priority > Priority.LOW and (
        chosen := victims(
            job, usable, running, within_share(job, list(hosts.values()), running, active)
        )
    ):
        for victim in chosen:
            victim.stopping = True
            decision.preempted.append(victim.attempt_id)
            mark_stopping(victim, hosts)
        target = fit(job, usable, {h.id: h.soon(gpu_job) for h in usable})
        ids = ", ".join(f"#{v.job_id}" for v in chosen)
        wait(job, f"Preempting lower-priority job(s) {ids} to make room.")
    else:
        wait(job, _capacity_reason(job))
    if target is None:
        closest = sorted(usable, key=lambda h: (-(h.free(gpu_job) + h.soon(gpu_job)), h.name))
        target = closest[: job.nodes]
    return target


def _announce(job_ids: list[int]) -> None:
    from jobs import events

    for job in Job.objects.filter(pk__in=job_ids):
        events.send(job.pk, events.job_state(job), job.project_id)


def resend_unclaimed(now=None) -> int:
    """Send the start message again for nodes their host has not claimed within
    ``CP_JOB_START_RESEND`` seconds (the message was lost with the broker, or its host
    restarted): claiming is idempotent, so a duplicate does nothing. Returns how many."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.JOB_START_RESEND)
    due = list(
        AttemptNode.objects.filter(
            state=NodeState.WAITING,
            attempt__state__in=ATTEMPT_LIVE,
            attempt__stop_requested="",
            sent_at__lt=cutoff,
        ).values_list("pk", "attempt_id", "rank", "worker_name")
    )
    sent = 0
    for node_id, attempt_id, rank, worker_name in due:
        if AttemptNode.objects.filter(pk=node_id, state=NodeState.WAITING).update(sent_at=now):
            current_app.send_task(
                RUN_ATTEMPT_TASK, args=[attempt_id, rank], queue=f"host.{worker_name}"
            )
            sent += 1
    return sent


def _dispatch(attempt_ids: list[int]) -> None:
    """Send one start message per node to its host's queue (by task name: jobs does not
    import the worker side)."""
    for attempt_id, rank, worker_name in AttemptNode.objects.filter(
        attempt_id__in=attempt_ids
    ).values_list("attempt_id", "rank", "worker_name"):
        current_app.send_task(
            RUN_ATTEMPT_TASK, args=[attempt_id, rank], queue=f"host.{worker_name}"
        )
