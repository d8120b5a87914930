"""One scheduler pass over 10,000 PENDING jobs on 100 hosts x 8 GPUs (target: < 200 ms).

    .venv/bin/python bench/jobs_scheduler.py [--jobs 10000] [--hosts 100]

Uses a throw-away SQLite database in a temporary directory (or DATABASE_URL, whose
database it fills: point it at a scratch one). Prints, against a baseline measured in the
same run (reading the pending jobs' rows and nothing else, the floor of any pass):
- the steady-state pass: the cluster is full, every job waits (what most passes are);
- the pass that fills an empty cluster (places 800 jobs and writes their attempts).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def setup() -> None:
    os.environ.setdefault("CP_VAR_DIR", tempfile.mkdtemp(prefix="cp-bench-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:1/0")  # events are not sent here
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def timed(fn, repeat: int = 5) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--hosts", type=int, default=100)
    args = parser.parse_args()
    setup()
    from django.db import transaction
    from django.utils import timezone

    from controlplane.cluster.models import Gpu, Worker
    from controlplane.tenancy.models import Project
    from jobs import events, scheduler
    from jobs.models import Job
    from jobs.states import JobState

    events.send = lambda *a, **k: None  # no channel layer in this benchmark
    projects = [Project.objects.get_or_create(name=f"p{i}")[0] for i in range(10)]
    now = timezone.now()
    with transaction.atomic():
        workers = Worker.objects.bulk_create(
            [
                Worker(name=f"h{i:03d}", queue=f"host.h{i:03d}", last_heartbeat_at=now)
                for i in range(args.hosts)
            ]
        )
        workers = list(Worker.objects.order_by("id"))
        Gpu.objects.bulk_create(
            [
                Gpu(worker=w, index=g, uuid=f"GPU-{w.name}-{g}", name="H100")
                for w in workers
                for g in range(8)
            ]
        )
        sizes = [1, 1, 1, 2, 2, 4, 8]
        Job.objects.bulk_create(
            [
                Job(
                    project=projects[i % len(projects)],
                    name=f"j{i}",
                    spec={},
                    entrypoint=["python", "x.py"],
                    gpus_per_node=sizes[i % len(sizes)],
                    procs_per_node=sizes[i % len(sizes)],
                    priority=i % 3,
                )
                for i in range(args.jobs)
            ],
            batch_size=2000,
        )
    scheduler._dispatch = lambda ids: None  # no broker: measure the decision and its writes

    def read_floor() -> None:
        list(
            Job.objects.filter(state=JobState.PENDING).values_list(
                "id", "project_id", "priority", "nodes", "gpus_per_node", "procs_per_node"
            )
        )

    floor = timed(read_floor)
    start = time.perf_counter()
    first = scheduler.schedule()
    fill = time.perf_counter() - start
    steady = timed(scheduler.schedule)
    placed = len(first.placed)
    print(f"pending jobs {args.jobs}, hosts {args.hosts} x 8 GPUs, database {Job.objects.db}")
    print(f"{'pass':<44}{'ms':>9}{'x floor':>10}")
    print(f"{'baseline: read the pending rows':<44}{floor * 1000:>9.1f}{1.0:>10.2f}")
    print(
        f"{'steady state (cluster full, all wait)':<44}{steady * 1000:>9.1f}{steady / floor:>10.2f}"
    )
    print(
        f"{f'fill the cluster ({placed} jobs placed)':<44}{fill * 1000:>9.1f}{fill / floor:>10.2f}"
    )
    print(f"target: steady-state pass < 200 ms -> {'met' if steady < 0.2 else 'NOT met'}")


if __name__ == "__main__":
    main()
