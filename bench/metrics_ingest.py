"""What keeping metric rollups costs a report: ``outputs.record_metrics`` (one step, 10
named values, its own transaction) with the rollups against the same call without them,
in the same run.

    .venv/bin/python bench/metrics_ingest.py [--reports 2000] [--names 10]

Uses a throw-away SQLite database in a temporary directory (or DATABASE_URL, whose
database it fills: point it at a scratch one). Events are not sent (no channel layer).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jobs_scheduler import setup


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=2000)
    parser.add_argument("--names", type=int, default=10)
    args = parser.parse_args()
    setup()
    from controlplane.tenancy.models import Project
    from jobs import events, outputs, rollups
    from jobs.models import Job, MetricRollup

    events.send = events.send_to_lists = lambda *a, **k: None
    project = Project.objects.get_or_create(name="bench")[0]
    keep = rollups.add_report

    def run(with_rollups: bool) -> list[float]:
        rollups.add_report = keep if with_rollups else (lambda *a, **k: None)
        job = Job.objects.create(project=project, name="m", spec={}, entrypoint=["x"])
        times = []
        for step in range(args.reports):
            values = {f"train/m{i}": 1.0 / (step + 1) + i for i in range(args.names)}
            start = time.perf_counter()
            outputs.record_metrics(job.pk, 1, step, values)
            times.append((time.perf_counter() - start) * 1000)
        return times

    run(True)  # warm-up: the tables and caches
    base, rolled = run(False), run(True)
    rollups.add_report = keep
    print(f"## {args.reports} reports of {args.names} values each (ms per report)")
    print("                      p50      p99")
    for label, t in (("without rollups", base), ("with rollups", rolled)):
        q = statistics.quantiles(t, n=100)
        print(f"{label:<18} {statistics.median(t):7.3f}  {q[98]:7.3f}")
    print(f"ratio with / without (p50): {statistics.median(rolled) / statistics.median(base):.2f}")
    rows = MetricRollup.objects.filter(job__name="m").count()
    print(f"rollup rows for {2 * args.reports * args.names} points: {rows}")


if __name__ == "__main__":
    main()
