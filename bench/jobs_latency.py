"""Job launch latency and throughput on the embedded stack (real processes).

    .venv/bin/python bench/jobs_latency.py [--jobs 50] [--burst 100] [--slots N]

Starts the stack (``python -m controlplane.stack``) in a temporary directory and measures,
from server-side timestamps (job created -> attempt started -> first log line stored):
- submit -> RUNNING and submit -> the entrypoint's first line, p50 / p95 over --jobs
  sequential one-process jobs;
- a burst of --burst short jobs submitted at once: accepted per second (API) and completed
  per second (first submit to last SUCCEEDED);
- what a client sees (--client jobs): from before its submit POST to the first line in
  its hands, (a) polling the logs API every 5 ms, (b) on the job's websocket opened right
  after the POST, with the POST's own time and the server's created -> stored beside them.
Baselines measured in the same run: a Celery round trip to this host's queue (the floor of
the dispatch hops) and starting a Python process that prints (the floor of any launch).
Anchors (ANCHORS.md, same machine kind): Ray Jobs 730 ms to the first line, 1.5-1.7 jobs/s
completed in a burst of 100.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.stack import Stack  # noqa: E402

HELLO = b"import os\nprint('hello from', os.environ['CP_JOB_ID'], flush=True)\n"


def archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("hello.py")
        info.size = len(HELLO)
        tar.addfile(info, io.BytesIO(HELLO))
    return buffer.getvalue()


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def client_side(api: httpx.Client, submit, stack: Stack, token: str, n: int) -> dict:
    """Submit-to-first-line as the client measures it, polling and on the websocket."""
    from websockets.sync.client import connect

    out: dict[str, list[float]] = {
        "client: submit POST": [],
        "client: server created -> line stored": [],
        "client: submit -> first line, polling 5 ms": [],
        "client: one logs poll (GET)": [],
        "client: submit -> first line, websocket": [],
    }
    for _ in range(n):
        t0 = time.perf_counter()
        job = submit()
        out["client: submit POST"].append(time.perf_counter() - t0)
        while True:
            g0 = time.perf_counter()
            page = api.get(f"/api/v1/jobs/{job['id']}/logs/", params={"limit": 1}).json()
            out["client: one logs poll (GET)"].append(time.perf_counter() - g0)
            if page["chunks"]:
                break
            time.sleep(0.005)
        out["client: submit -> first line, polling 5 ms"].append(time.perf_counter() - t0)
        out["client: server created -> line stored"].append(
            ts(page["chunks"][0]["created_at"]) - ts(job["created_at"])
        )
        time.sleep(0.3)  # let the job end
    uri = stack.url.replace("http://", "ws://")
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(n):
        t0 = time.perf_counter()
        job = submit()
        with connect(f"{uri}/ws/jobs/{job['id']}/", additional_headers=headers,
                     origin=stack.url, open_timeout=10) as ws:  # fmt: skip
            while True:
                message = json.loads(ws.recv(timeout=30))
                if message.get("type") == "log" or (
                    message.get("type") == "snapshot" and message.get("logs")
                ):
                    break
        out["client: submit -> first line, websocket"].append(time.perf_counter() - t0)
        time.sleep(0.3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--slots", type=int, default=0, help="CP_WORKER_CPU_SLOTS (0: default)")
    parser.add_argument("--client", type=int, default=20, help="jobs per client-side measure")
    args = parser.parse_args()
    extra = {"CP_LOG_LEVEL": "warning"}
    if args.slots:
        extra["CP_WORKER_CPU_SLOTS"] = str(args.slots)
    stack = Stack(fake_gpus=0, extra_env=extra)
    code = archive()
    try:
        stack.start()
        stack.wait_ready()
        token = stack.manage("create_token", "admin").stdout.strip()
        api = httpx.Client(
            base_url=stack.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        spec = json.dumps(
            {"name": "hello", "entrypoint": ["python", "hello.py"], "max_restarts": 0}
        )

        def submit() -> dict:
            response = api.post(
                "/api/v1/jobs/",
                data={"spec": spec},
                files={"code": ("c.tgz", code, "application/gzip")},
            )
            response.raise_for_status()
            return response.json()

        def wait_done(job_id: int) -> dict:
            while True:
                job = api.get(f"/api/v1/jobs/{job_id}/").json()
                if job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                    return job
                time.sleep(0.02)

        # Baselines.
        from celery import Celery

        app = Celery(broker=stack.redis_url, backend=stack.redis_url)
        trips = []
        for _ in range(20):
            start = time.perf_counter()
            app.send_task("workers.ping", queue=f"host.{stack.hostname}").get(timeout=10)
            trips.append(time.perf_counter() - start)
        spawns = []
        for _ in range(10):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "print('x')"], capture_output=True, check=True)
            spawns.append(time.perf_counter() - start)

        submit()  # warm up
        time.sleep(1)
        to_running, to_line, lifetime = [], [], []
        for _ in range(args.jobs):
            job = wait_done(submit()["id"])
            first = api.get(f"/api/v1/jobs/{job['id']}/logs/", params={"limit": 1}).json()
            created = ts(job["created_at"])
            to_running.append(ts(job["started_at"]) - created)
            to_line.append(ts(first["chunks"][0]["created_at"]) - created)
            lifetime.append(ts(job["finished_at"]) - created)

        client = client_side(api, submit, stack, token, args.client)

        start = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            jobs = list(pool.map(lambda _: submit(), range(args.burst)))
        accepted = time.perf_counter() - start
        finished = [wait_done(j["id"]) for j in jobs]
        completed = max(ts(j["finished_at"]) for j in finished) - min(
            ts(j["created_at"]) for j in jobs
        )
        ok = sum(j["state"] == "SUCCEEDED" for j in finished)
        celery_ms = statistics.median(trips) * 1000
        spawn_ms = statistics.median(spawns) * 1000
        print(f"machine load: {open('/proc/loadavg').read().split()[:3]}")
        print(f"{'measure':<46}{'p50 ms':>9}{'p95 ms':>9}{'x floor':>9}")
        print(f"{'floor: Celery round trip to the host queue':<46}{celery_ms:>9.1f}")
        print(f"{'floor: start a Python process that prints':<46}{spawn_ms:>9.1f}")
        floor = celery_ms + spawn_ms
        for name, values in (
            ("submit -> RUNNING", to_running),
            ("submit -> first log line", to_line),
            ("submit -> SUCCEEDED", lifetime),
        ):
            p50, p95 = pct(values, 0.5) * 1000, pct(values, 0.95) * 1000
            print(f"{name:<46}{p50:>9.1f}{p95:>9.1f}{p50 / floor:>9.2f}")
        for name, values in client.items():
            p50, p95 = pct(values, 0.5) * 1000, pct(values, 0.95) * 1000
            print(f"{name:<46}{p50:>9.1f}{p95:>9.1f}{p50 / floor:>9.2f}")
        print(
            f"burst of {args.burst}: accepted {args.burst / accepted:.1f} jobs/s, "
            f"completed {args.burst / completed:.1f} jobs/s ({ok} succeeded)"
        )
        print("anchors: Ray Jobs 730 ms to the first line; 1.5-1.7 jobs/s completed")
    finally:
        stack.close()


if __name__ == "__main__":
    main()
