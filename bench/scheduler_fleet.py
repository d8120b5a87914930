"""The scheduler at fleet scale: the real scheduling pass and job lifecycle (claim,
finish, preemption) against a database, with simulated hosts and simulated time.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/cp_fleet \\
        .venv/bin/python bench/scheduler_fleet.py [--hosts 1000] [--jobs 100000] [--hours 6]

No processes: each tick is one call of ``jobs.scheduler.schedule()`` (the code the control
plane runs, not a copy) followed by what the hosts would do in ``--tick`` simulated
seconds: claim the nodes just placed (``lifecycle.claim_node``), end the nodes whose work
is done or that were asked to stop for a preemption (``lifecycle.finish_node``, exit 0:
a preempted job checkpoints and later resumes with the work it had left). Hosts
heartbeat every tick (one UPDATE). The database is filled first: ``--hosts`` x 8 GPUs,
50 projects (10 with a 256-GPU quota), ``--jobs`` queued at the start and more arriving
all along; gang sizes 1-64 GPUs (a node per 8), priorities low/normal/high, run times
log-normal around an hour. Broker and websocket sends are switched off.

Prints: pass time p50/p99/max (steady state: after the first pass, which fills the empty
fleet), placements per second of pass time, GPU utilization over the steady state, wait
from submit to first start by gang size (p50/p95/max, simulated minutes), the fair-share
error per project, and preemptions. Targets: a steady-state pass under 200 ms at p99; 90%
utilization; no gang size starved (its maximum wait bounded).

Point DATABASE_URL at a fresh scratch database (the pass reads every pending job in it,
so leftovers of an earlier run would count): the script migrates it and leaves its rows.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZES = [(1, 0.35), (2, 0.15), (4, 0.15), (8, 0.20), (16, 0.08), (32, 0.05), (64, 0.02)]
PRIORITIES = [(0, 0.2), (1, 0.7), (2, 0.1)]  # low, normal, high


def setup() -> None:
    os.environ.setdefault("CP_VAR_DIR", tempfile.mkdtemp(prefix="cp-fleet-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing is sent
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def pick(rng: random.Random, table: list[tuple[int, float]]) -> int:
    return rng.choices([v for v, _ in table], [w for _, w in table])[0]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=100_000, help="queued at the start")
    parser.add_argument("--hours", type=float, default=6.0, help="simulated")
    parser.add_argument("--tick", type=float, default=60.0, help="simulated seconds per pass")
    parser.add_argument("--arrivals", type=float, default=0.0,
                        help="jobs arriving per simulated minute (default: about the rate "
                             "the fleet completes them)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    setup()
    from celery import current_app
    from django.db import connection, transaction
    from django.utils import timezone

    from controlplane.cluster.models import Gpu, Worker
    from controlplane.tenancy.models import Project
    from jobs import events, lifecycle, scheduler
    from jobs.models import Attempt, AttemptNode, Job
    from jobs.states import JobState

    events._send = lambda *a, **k: None  # no channel layer here
    scheduler._dispatch = lambda ids: None  # no broker: the simulated hosts claim instead
    current_app.send_task = lambda *a, **k: None  # lifecycle's "schedule soon" nudges
    logging.getLogger("jobs").setLevel(logging.WARNING)
    rng = random.Random(args.seed)
    fleet_gpus = args.hosts * 8

    t0 = time.perf_counter()
    tag = f"f{int(time.time()) % 100000}"
    projects = Project.objects.bulk_create(
        [Project(name=f"{tag}-p{i:02d}", max_gpus=256 if i < 10 else None) for i in range(50)]
    )
    projects = list(Project.objects.filter(name__startswith=f"{tag}-").order_by("name"))
    now = timezone.now()
    Worker.objects.bulk_create(
        [Worker(name=f"{tag}-h{i:04d}", queue=f"host.{tag}-h{i:04d}", last_heartbeat_at=now,
                address=f"10.0.{i // 250}.{i % 250}", cpu_slots=0, sandbox="bwrap")
         for i in range(args.hosts)],
        batch_size=1000,
    )  # fmt: skip
    workers = list(Worker.objects.filter(name__startswith=f"{tag}-h"))
    Gpu.objects.bulk_create(
        [Gpu(worker=w, index=g, uuid=f"GPU-{w.name}-{g}", name="H100") for w in workers
         for g in range(8)],
        batch_size=4000,
    )  # fmt: skip
    worker_ids = [w.pk for w in workers]

    work: dict[int, float] = {}  # job id -> simulated seconds of work left
    submitted_at: dict[int, float] = {}  # job id -> simulated time it was submitted
    gpus_of: dict[int, int] = {}
    project_of: dict[int, int] = {}

    def make_jobs(count: int, sim_now: float) -> None:
        rows = []
        for _ in range(count):
            gpus = pick(rng, SIZES)
            nodes = max(1, gpus // 8)
            rows.append(
                Job(
                    project=rng.choice(projects),
                    name="sim",
                    spec={},
                    entrypoint=["python", "train.py"],
                    nodes=nodes,
                    gpus_per_node=min(gpus, 8),
                    procs_per_node=min(gpus, 8),
                    priority=pick(rng, PRIORITIES),
                    max_restarts=0,
                )
            )
        made = Job.objects.bulk_create(rows, batch_size=2000)
        if any(j.pk is None for j in made):
            raise SystemExit("this database cannot return ids from bulk_create: use PostgreSQL")
        for job in made:
            # log-normal around an hour, between 5 minutes and 12 hours
            work[job.pk] = min(12 * 3600, max(300, rng.lognormvariate(math.log(3600), 0.9)))
            submitted_at[job.pk] = sim_now
            gpus_of[job.pk] = job.nodes * job.gpus_per_node
            project_of[job.pk] = job.project_id

    make_jobs(args.jobs, 0.0)
    mean_gpu_seconds = sum(work[j] * gpus_of[j] for j in work) / len(work)
    arrivals = args.arrivals or 0.95 * fleet_gpus / mean_gpu_seconds * 60  # per minute
    print(
        f"filled: {args.hosts} hosts x 8 GPUs, {args.jobs} queued jobs, 50 projects in "
        f"{time.perf_counter() - t0:.1f} s; arrivals {arrivals:.1f}/simulated minute; "
        f"database {connection.vendor}",
        flush=True,
    )

    running: dict[
        int, tuple[int, float, list[tuple[int, str]]]
    ] = {}  # attempt -> job, start, nodes
    first_start: dict[int, float] = {}
    gpu_seconds: dict[int, float] = defaultdict(float)  # project -> GPU-seconds used
    passes: list[float] = []
    placed_total, placed_time = 0, 0.0
    utilization: list[float] = []
    ticks = int(args.hours * 3600 / args.tick)
    for tick in range(ticks):
        sim_now = tick * args.tick
        Worker.objects.filter(pk__in=worker_ids).update(last_heartbeat_at=timezone.now())
        if tick:
            make_jobs(rng.randint(0, int(2 * arrivals * args.tick / 60)), sim_now)
        start = time.perf_counter()
        decision = scheduler.schedule()
        took = time.perf_counter() - start
        if tick:  # the first pass fills an empty fleet: reported on its own
            passes.append(took)
            placed_time += took
            placed_total += len(decision.placed)
        else:
            fill = (took, len(decision.placed))
        # The hosts start what was placed.
        for attempt_id in decision.placed:
            nodes = list(
                AttemptNode.objects.filter(attempt_id=attempt_id).values_list("rank", "worker_name")
            )
            claims = []
            job_id = None
            for rank, worker_name in nodes:
                plan = lifecycle.claim_node(attempt_id, rank, worker_name)
                if plan is not None:
                    claims.append((plan.node_id, plan.claim))
                    job_id = plan.job_id
            if job_id is not None:
                running[attempt_id] = (job_id, sim_now, claims)
                first_start.setdefault(job_id, sim_now)
        # What the hosts do during this tick: work gets done; preempted attempts stop.
        stopping = set(
            Attempt.objects.filter(pk__in=list(running), stop_requested__gt="").values_list(
                "pk", flat=True
            )
        )
        used = 0
        for attempt_id, (job_id, _began, claims) in list(running.items()):
            done_in_tick = min(args.tick, max(0.0, work[job_id]))
            if attempt_id in stopping:
                done_in_tick = 0.0
            work[job_id] -= done_in_tick
            gpu_seconds[project_of[job_id]] += done_in_tick * gpus_of[job_id]
            used += gpus_of[job_id]
            if attempt_id in stopping or work[job_id] <= 0:
                for node_id, claim in claims:
                    lifecycle.finish_node(node_id, claim, 0)
                del running[attempt_id]
        utilization.append(used / fleet_gpus)
        if tick % max(1, ticks // 12) == 0:
            print(
                f"t={sim_now / 3600:5.2f} h  pass {took * 1000:7.1f} ms  placed "
                f"{len(decision.placed):4d}  preempting {len(decision.preempted):3d}  "
                f"running {len(running):5d}  utilization {used / fleet_gpus:6.1%}  "
                f"waiting {decision.waiting}",
                flush=True,
            )
    with transaction.atomic():
        preemptions = sum(
            Job.objects.filter(project__in=projects).values_list("preemptions", flat=True)
        )
        pending_left = Job.objects.filter(project__in=projects, state=JobState.PENDING).count()
    ended = sim_now + args.tick
    steady = utilization[len(utilization) // 4 :]  # after the first quarter (warm-up)
    print()
    print(
        f"first pass (empty fleet): {fill[0] * 1000:.0f} ms, {fill[1]} jobs placed and "
        f"claimed into {args.hosts * 8} GPUs"
    )
    print(
        f"steady-state pass: p50 {pct(passes, 0.5) * 1000:.1f} ms  p99 "
        f"{pct(passes, 0.99) * 1000:.1f} ms  max {max(passes) * 1000:.1f} ms over "
        f"{len(passes)} passes (target p99 < 200 ms: "
        f"{'met' if pct(passes, 0.99) < 0.2 else 'NOT met'})"
    )
    print(
        f"placement throughput: the first pass placed {fill[1] / fill[0]:.0f} jobs/s; later "
        f"passes placed {placed_total} jobs in {placed_time:.1f} s of pass time"
    )
    print(
        f"GPU utilization, steady state (last 3/4): mean {statistics.mean(steady):.1%}  "
        f"min {min(steady):.1%} (target 90%)"
    )
    print(f"preemptions: {preemptions}; still pending at the end: {pending_left}")
    print("\nwait from submit to first start, simulated minutes (jobs started / submitted):")
    heads = ("GPUs", "started", "of", "p50", "p95", "max", "oldest unstarted")
    print(" ".join(f"{h:>{w}}" for h, w in zip(heads, (5, 8, 7, 7, 7, 7, 17), strict=True)))
    for size, _ in SIZES:
        jobs_of = [j for j in submitted_at if gpus_of[j] == size]
        waits = [(first_start[j] - submitted_at[j]) / 60 for j in jobs_of if j in first_start]
        unstarted = [(ended - submitted_at[j]) / 60 for j in jobs_of if j not in first_start]
        print(
            f"{size:>5} {len(waits):>8} {len(jobs_of):>7} {pct(waits, 0.5):>7.0f} "
            f"{pct(waits, 0.95):>7.0f} {max(waits, default=0):>7.0f} "
            f"{max(unstarted, default=0):>17.0f}"
        )
    # Fair share: among the projects without a quota (all always have work queued), the
    # GPU-time each got against an equal split of what they got together.
    free = [p.pk for p in projects if p.max_gpus is None]
    total = sum(gpu_seconds[p] for p in free)
    errors = [abs(gpu_seconds[p] / total - 1 / len(free)) * len(free) for p in free]
    print(
        f"\nfair share (40 projects without quota): GPU-time vs an equal split, mean error "
        f"{statistics.mean(errors):.1%}, max {max(errors):.1%}; the 10 with a 256-GPU quota "
        f"used at most {max(gpu_seconds[p.pk] for p in projects if p.max_gpus) / ended:.0f} "
        f"GPUs on average"
    )


if __name__ == "__main__":
    main()
