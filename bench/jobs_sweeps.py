"""Scheduler overhead of a sweep: a 1,000-trial random sweep placed on 1,000 CPU slots
(trials/s), and ASHA's decision latency after a metrics report.

    .venv/bin/python bench/jobs_sweeps.py [--trials 1000]

Uses a throw-away SQLite database in a temporary directory (or DATABASE_URL: point it at
a scratch database). Baselines measured in the same run:
- placing: the same number of ordinary jobs submitted one by one through the jobs service
  (``submit_job``, the API's path) and placed by the scheduler. The sweep's figure is
  ``create_sweep`` (which validates and submits its trials) plus the same scheduler passes;
  the ratio is sweep trials/s over plain jobs/s (1.0: a sweep adds nothing).
- deciding: a metrics report of an ordinary job (``record_metrics``, what every report
  costs); against it, the report of a trial at its first rung, which also runs the ASHA
  judgement against every trial recorded there so far (and stops the losers).
The broker and the channel layer are left out of both sides (no tick task, no events).
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

SPEC = {"entrypoint": ["python", "-m", "workers.recipes.causal_lm"], "args": ["--max-steps", "100"]}


def setup() -> None:
    os.environ.setdefault("CP_VAR_DIR", tempfile.mkdtemp(prefix="cp-bench-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing is sent there
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def place_all(expected: int) -> float:
    """Scheduler passes until ``expected`` jobs hold slots; the seconds taken."""
    from jobs import scheduler
    from jobs.models import Job

    start = time.perf_counter()
    while Job.objects.filter(state="SCHEDULED").count() < expected:
        if not scheduler.schedule().placed:
            raise SystemExit("the scheduler placed nothing: not enough slots?")
    return time.perf_counter() - start


def reset() -> None:
    from jobs.models import Job
    from jobs.sweeps.models import Sweep

    Sweep.objects.all().delete()
    Job.objects.all().delete()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--reports", type=int, default=300, help="reports timed per side")
    args = parser.parse_args()
    setup()
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from controlplane.cluster.models import Worker
    from controlplane.tenancy.models import Membership, Project, Role
    from controlplane.tenancy.services import Actor
    from jobs import events, lifecycle, outputs, scheduler
    from jobs import services as job_services
    from jobs.models import Job
    from jobs.sweeps import services as sweeps
    from jobs.sweeps.models import Trial

    events._send = lambda *a, **k: None  # no channel layer here
    job_services.request_tick = lambda: None  # no broker: the passes are run below
    lifecycle.request_tick = lambda: None
    scheduler._dispatch = lambda ids: None
    user = get_user_model().objects.create_user("bench")
    project = Project.objects.create(name="bench")
    Membership.objects.create(user=user, project=project, role=Role.MEMBER)
    actor = Actor(user=user)
    now = timezone.now()
    hosts = (args.trials + 7) // 8
    Worker.objects.bulk_create(
        [Worker(name=f"h{i:03d}", queue=f"host.h{i:03d}", cpu_slots=8, last_heartbeat_at=now)
         for i in range(hosts)]
    )  # fmt: skip

    start = time.perf_counter()
    for i in range(args.trials):
        job_services.submit_job(actor, {**SPEC, "name": f"plain-{i}", "project": "bench"})
    plain_submit = time.perf_counter() - start
    plain_place = place_all(args.trials)
    plain_rate = args.trials / (plain_submit + plain_place)
    reset()

    search = {
        "name": "bench", "project": "bench", "job": SPEC, "method": "random",
        "parameters": {"lr": {"min": 1e-5, "max": 1e-1, "log": True},
                       "warmup-steps": {"min": 0, "max": 100}, "opt": ["adamw", "sgd"]},
        "metric": "loss", "max_trials": args.trials, "max_concurrent": args.trials,
        "early_stopping": {"min_steps": 10, "max_steps": 1000, "reduction_factor": 3},
    }  # fmt: skip
    start = time.perf_counter()
    sweep = sweeps.create_sweep(actor, search)
    sweep_submit = time.perf_counter() - start
    sweep_place = place_all(args.trials)
    sweep_rate = args.trials / (sweep_submit + sweep_place)

    # Decisions: trials report at the first rung one after another, each judged against
    # all recorded before it (the loss is random, so about 2/3 are stopped).
    import random

    rng = random.Random(1)
    trial_ids = list(Trial.objects.filter(sweep=sweep).values_list("job_id", flat=True))
    n = min(args.reports, len(trial_ids))
    plain_ids = [job_services.submit_job(actor, {**SPEC, "name": f"p{i}", "project": "bench"}).pk
                 for i in range(n)]  # fmt: skip
    plain_times, kept, stops = [], [], []
    for job_id in plain_ids:
        start = time.perf_counter()
        outputs.record_metrics(job_id, 1, 10, {"loss": rng.random()})
        plain_times.append(time.perf_counter() - start)
    for job_id in trial_ids[:n]:
        start = time.perf_counter()
        outputs.record_metrics(job_id, 1, 10, {"loss": rng.random()})
        took = time.perf_counter() - start
        stopped = Trial.objects.filter(job_id=job_id, state="STOPPED").exists()
        (stops if stopped else kept).append(took)
    trial_times = kept + stops
    asked = Job.objects.filter(trial__state="STOPPED", attempts__stop_requested="cancel").count()

    print(f"trials {args.trials} on {hosts} hosts x 8 CPU slots, database {Job.objects.db}")
    print(f"{'placing':<52}{'s':>8}{'per s':>9}{'x base':>8}")
    print(f"{'baseline: ' + str(args.trials) + ' jobs, submit_job one by one':<52}"
          f"{plain_submit + plain_place:>8.2f}{plain_rate:>9.0f}{1.0:>8.2f}")  # fmt: skip
    print(
        f"{'random sweep of ' + str(args.trials) + ' trials (create + place)':<52}"
        f"{sweep_submit + sweep_place:>8.2f}{sweep_rate:>9.0f}{sweep_rate / plain_rate:>8.2f}"
    )
    print(f"  of which create_sweep {sweep_submit:.2f} s, scheduler passes {sweep_place:.2f} s")
    p50p, p50t = statistics.median(plain_times) * 1000, statistics.median(trial_times) * 1000
    p99p, p99t = percentile(plain_times, 0.99) * 1000, percentile(trial_times, 0.99) * 1000
    print(f"{'a metrics report':<52}{'p50 ms':>8}{'p99 ms':>9}{'x base':>8}")
    print(f"{'baseline: an ordinary job':<52}{p50p:>8.2f}{p99p:>9.2f}{1.0:>8.2f}")
    print(f"{'a trial at its first rung (ASHA judged)':<52}{p50t:>8.2f}{p99t:>9.2f}"
          f"{p50t / p50p:>8.2f}")  # fmt: skip
    sides = (("  judged and kept", kept), ("  judged and stopped (job cancelled)", stops))
    for label, times in sides:
        if times:
            p50, p99 = statistics.median(times) * 1000, percentile(times, 0.99) * 1000
            print(f"{label + f' ({len(times)})':<52}{p50:>8.2f}{p99:>9.2f}{p50 / p50p:>8.2f}")
    print(
        f"ASHA decision latency (p50 over a plain report): {p50t - p50p:.2f} ms; "
        f"{asked} of {len(stops)} stopped trials' jobs asked to stop"
    )


if __name__ == "__main__":
    main()
