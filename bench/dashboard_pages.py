"""Dashboard pages at size: first paint and time to interactive of the jobs list with
10,000 jobs and of a job page with 20 series of 100,000 points each (the server sends
each series downsampled to at most 1,000 points, from its rollups), in headless Chromium.

    .venv/bin/python bench/dashboard_pages.py [--jobs 10000] [--series 20] [--points 100000]
        [--runs 5]

Starts the real stack (uvicorn, Celery, Redis, beat; its database as configured: SQLite by
default, PostgreSQL with DATABASE_URL) in a temporary directory and seeds it through the
ORM: --jobs finished jobs in project "default", one of them with --series series of
--points points (their rollups built as the ingest path keeps them); and, as the baseline
in the same run, a project "small" with 10 jobs, one with --series series of 100 points.
Each page is loaded --runs times signed in as admin (median reported):

- first paint: the browser's first-contentful-paint;
- server: the HTML response (responseStart - requestStart: the view's own time);
- interactive: the page is usable: the list's websocket says "live" (it receives state
  changes) and, on the job page, every chart is drawn (the snapshot with all series has
  arrived over the websocket and plotly has rendered it).

Targets (issue 13): first paint and interactive under 1000 ms on the 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.browser_common import signed_in_page  # noqa: E402
from tests.e2e.stack import ADMIN_PASSWORD, Stack  # noqa: E402

SEED = """
import random, datetime
from django.db import transaction
from django.utils import timezone
from controlplane.tenancy.models import Project
from jobs import rollups
from jobs.models import Job, Metric

JOBS, SERIES, POINTS = {jobs}, {series}, {points}
random.seed(7)
now = timezone.now()
states = ["SUCCEEDED", "FAILED", "CANCELLED"]
spec = {{"name": "bench", "entrypoint": ["python", "train.py"], "resources": {{"gpus": 0}}}}

def seed(project, count, points):
    jobs = []
    for i in range(count):
        made = now - datetime.timedelta(minutes=count - i)
        jobs.append(Job(
            project=project, name=f"run-{{i:05d}}", spec=spec, entrypoint=spec["entrypoint"],
            tags=",bench," if i % 3 else ",bench,lr-sweep,", state=states[i % 3],
            progress={{"step": 100 + i % 900, "total": 1000}}, created_at=made,
            started_at=made, finished_at=made + datetime.timedelta(seconds=50),
        ))
    jobs = Job.objects.bulk_create(jobs, batch_size=2000)
    big = jobs[-1]  # the newest: first on the list
    rows = []
    for s in range(SERIES):
        name = f"train/series_{{s:02d}}"
        for step in range(points):
            rows.append(Metric(job=big, step=step, name=name,
                               value=1.0 / (1 + step * 0.001) + random.random() * 0.01,
                               created_at=now))
            if len(rows) >= 20000:
                Metric.objects.bulk_create(rows); rows = []
    Metric.objects.bulk_create(rows)
    rollups.rebuild(big.pk)  # as record_metrics keeps them, report by report
    return big.pk

with transaction.atomic():
    default = Project.objects.get(name="default")
    small, _ = Project.objects.get_or_create(name="small")
    print("SEEDED", seed(default, JOBS, POINTS), seed(small, 10, 100))
"""


SCROLL_THROUGH = """async () => {
    for (const d of document.querySelectorAll('#charts .chart')) {
        d.scrollIntoView();
        while (!d.classList.contains('js-plotly-plot'))
            await new Promise((r) => requestAnimationFrame(r));
    } }"""


def measure(
    stack: Stack, paths: dict[str, tuple[str, str]], runs: int, shots: str = ""
) -> dict[str, dict]:
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="cp-bench-chromium-")
    nav = """() => { const n = performance.getEntriesByType('navigation')[0];
        const p = performance.getEntriesByName('first-contentful-paint')[0];
        return {fcp: p ? p.startTime : null, server: n.responseStart - n.requestStart,
                html_kib: n.transferSize / 1024, dom: n.domContentLoadedEventEnd}; }"""
    out: dict[str, dict] = {k: {"fcp": [], "server": [], "ready": [], "dom": []} for k in paths}
    with sync_playwright() as p:
        browser, page = signed_in_page(
            p, stack, profile, ADMIN_PASSWORD, viewport={"width": 1400, "height": 900}
        )
        for path, ready in paths.values():  # once each: static files cached
            page.goto(f"{stack.url}{path}")
            page.wait_for_function(ready, timeout=60000)
        for _ in range(runs):
            for key, (path, ready) in paths.items():
                page.goto(f"{stack.url}{path}")
                page.wait_for_function(ready, timeout=60000, polling=5)
                done = page.evaluate("() => performance.now()")
                page.wait_for_function(
                    "() => performance.getEntriesByName('first-contentful-paint').length"
                )
                timing = page.evaluate(nav)
                for name in ("fcp", "server", "dom"):
                    out[key][name].append(timing[name])
                out[key]["ready"].append(done)
                out[key]["html_kib"] = timing["html_kib"]
                out[key]["rows"] = page.locator("#jobs tbody tr[data-job]").count()
                out[key]["charts"] = page.locator("#charts .js-plotly-plot").count()
                if key.startswith("job"):  # then scroll through: every chart gets drawn
                    page.evaluate(SCROLL_THROUGH)
                    out[key].setdefault("all", []).append(page.evaluate("() => performance.now()"))
                    if shots:
                        page.evaluate("() => window.scrollTo(0, 0)")
                        page.screenshot(path=f"{shots}/bench-{key}.png")
        browser.close()
    shutil.rmtree(profile, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--series", type=int, default=20)
    parser.add_argument("--points", type=int, default=100000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--screenshots", default="", help="a folder for the pages' PNGs")
    args = parser.parse_args()
    if not shutil.which("chromium"):
        sys.exit("needs Debian's chromium (apt-get install chromium)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still stop the stack
    print(f"# load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    stack = Stack(fake_gpus=0, extra_env={"CP_WORKER_CPU_SLOTS": "0"})
    try:
        stack.start()
        stack.wait_ready()
        started = time.monotonic()
        code = SEED.format(jobs=args.jobs, series=args.series, points=args.points)
        seeded = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=stack.env,
            capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        if seeded.returncode:
            sys.exit(seeded.stderr[-3000:])
        big, small = seeded.stdout.split("SEEDED")[-1].split()
        print(f"# seeded {args.jobs + 10} jobs and {args.series * (args.points + 100)} "
              f"metric points in {time.monotonic() - started:.0f} s")  # fmt: skip
        live = "() => document.getElementById('conn')?.textContent === 'live'"
        # Charts are drawn as they come on screen: the page is usable when every chart
        # on the first screen is drawn (all of the job's series have arrived).
        charts = f"""() => {{
            const divs = [...document.querySelectorAll('#charts .chart')];
            const onScreen = divs.filter((d) => d.getBoundingClientRect().top < innerHeight);
            return divs.length === {args.series} && onScreen.length > 0
                && onScreen.every((d) => d.classList.contains('js-plotly-plot'))
                && document.getElementById('conn')?.textContent === 'live'; }}"""
        paths = {
            "list": ("/jobs/?project=default", live),
            "list-small": ("/jobs/?project=small", live),
            "job": (f"/jobs/{big}/", charts),
            "job-small": (f"/jobs/{small}/", charts),
        }
        result = measure(stack, paths, args.runs, args.screenshots)
    finally:
        stack.close()

    def med(key: str, name: str) -> float:
        return statistics.median(result[key][name])

    print(f"\n## {args.runs} loads each, median ms (Chromium headless, signed in)")
    print("page                                   | first paint | server | DOM ready "
          "| interactive | HTML KiB | shown")  # fmt: skip
    labels = {
        "list": f"jobs list, {args.jobs:,} jobs",
        "list-small": "jobs list, 10 jobs (baseline)",
        "job": f"job page, {args.series} x {args.points:,} points",
        "job-small": f"job page, {args.series} x 100 points (baseline)",
    }
    for key, label in labels.items():
        r = result[key]
        shown = (
            f"{r['rows']} rows" if key.startswith("list")
            else f"{r['charts']} charts at once, all {args.series} at "
            f"{statistics.median(r['all']):.0f} ms"
        )  # fmt: skip
        print(f"{label:<38} | {med(key, 'fcp'):11.0f} | {med(key, 'server'):6.0f} | "
              f"{med(key, 'dom'):9.0f} | {med(key, 'ready'):11.0f} | {r['html_kib']:8.1f} | {shown}")  # fmt: skip  # noqa: E501
    for big_key, small_key in (("list", "list-small"), ("job", "job-small")):
        print(f"ratio {big_key} / baseline: first paint "
              f"{med(big_key, 'fcp') / med(small_key, 'fcp'):.2f}, interactive "
              f"{med(big_key, 'ready') / med(small_key, 'ready'):.2f}")  # fmt: skip
    worst = max(med(k, n) for k in ("list", "job") for n in ("fcp", "ready"))
    print(f"target: first paint and interactive < 1000 ms: worst {worst:.0f} ms "
          f"({'met' if worst < 1000 else 'NOT met'})")  # fmt: skip
    for key in labels:
        print(f"runs {key}: interactive {[round(x) for x in result[key]['ready']]}")
    print(f"# load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
