"""Deployments on the real stack: cold start, a replica killed and a rolling update under
load (failed requests out of how many), autoscaling reaction and a scale-from-zero
request, each next to its baseline measured in the same run.

* cold start: deploy -> READY through the control plane (scheduler, worker, sandbox,
  load, warm-up, ready line, routing) vs `python -m serving.replica` started by hand on
  the same model until its ready line (ratio = what the control plane adds);
* kill -9 of one of two replicas under 3 clients, and a rolling update (new engine flag)
  of two replicas under 3 clients: requests that failed / requests sent (target 0);
* autoscaling 1 -> 2 (target 1 request in flight, upscale_delay 0) when 4 clients start:
  seconds until the new replica serves, vs that replica's own cold start;
* scale to zero: the first request after idle, end to end, vs a warm request.

`python bench/serving_deployments.py` (about 4 minutes on the 2-core VM).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.stack import ROOT, Stack
from tests.e2e.test_jobs import wait_for
from tests.e2e.test_serving import (
    PROMPT,
    Load,
    _tar,
    delete,
    deploy,
    deployment,
    gateway,
    replica_processes,
    wait_ready,
)


def machine_load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def start_stack() -> Stack:
    stack = Stack(
        fake_gpus=0,
        extra_env={
            "CP_WORKER_CPU_SLOTS": "0",
            "CP_JOB_LEASE_SECONDS": "4",
            "CP_JOB_LEASE_RENEW_INTERVAL": "0.5",
            "CP_WORKER_HEARTBEAT_INTERVAL": "0.5",
            "CP_SCHEDULER_INTERVAL": "0.5",
            "CP_JOB_RESTART_BACKOFF": "0.5",
            "CP_SERVING_RECONCILE_INTERVAL": "0.5",
        },
    )
    stack.start()
    stack.wait_ready()
    for name in ("w-a", "w-b"):
        stack.start_worker(name)
    stack.token = stack.manage("create_token", "admin", "--name", "bench").stdout.strip()
    stack.api = httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {stack.token}"}, timeout=60
    )
    wait_for(
        lambda: (
            sum(
                w["status"] == "online" for w in stack.api.get("/api/v1/workers/").json()["results"]
            )
            >= 2
        ),
        60,
        "workers",
    )
    return stack


def register(stack: Stack, model_dir: Path) -> None:
    model = stack.api.post("/api/v1/models/", json={"name": "tiny", "project": "default"}).json()
    stack.api.post(
        f"/api/v1/models/{model['id']}/versions/",
        files={"archive": ("tiny.tar", _tar(model_dir), "application/x-tar")},
    ).raise_for_status()


def by_hand(model_dir: Path) -> float:
    """Seconds until a hand-started replica prints its ready line."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.replica", "--model", str(model_dir), "--port", "0",
         "--threads", "1", "--device", "cpu"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        for line in proc.stdout:
            if json.loads(line).get("event") == "ready":
                return time.monotonic() - started
        raise RuntimeError("the replica exited before it was ready")
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    from serving.engine.tiny import build_tiny_llama

    model_dir = build_tiny_llama(
        Path(tempfile.mkdtemp(prefix="bench-tiny-")), "test", train_steps=40
    )
    rows: list[tuple[str, str, str]] = []
    print(f"machine load: {machine_load()}")
    hand = min(by_hand(model_dir) for _ in range(2))
    stack = start_stack()
    try:
        register(stack, model_dir)
        started = time.monotonic()
        dep = deploy(stack, name="chat", replicas=2)
        dep = wait_ready(stack, dep["id"], r1=2)
        ready_in = time.monotonic() - started
        cold = max(r["cold_start_seconds"] for r in dep["replica_set"])
        ratio = f"x{ready_in / hand:.2f} of a replica started by hand ({hand:.1f} s)"
        rows.append(("cold start: deploy -> 2 replicas READY", f"{ready_in:.1f} s", ratio))
        rows.append(("  of which the replica's own start (claim -> ready)", f"{cold:.1f} s", ""))

        with Load(stack, "chat") as load:
            wait_for(lambda: load.ok >= 20, 30, "requests")
            replica_processes("chat")[0].kill()
            time.sleep(2)  # the crash is seen before waiting for the replica to be back
            wait_ready(stack, dep["id"], r1=2, timeout=120)
            mark = load.ok
            wait_for(lambda: load.ok >= mark + 20, 30, "requests after")
        failed = f"{len(load.failures)} of {load.ok + len(load.failures)}"
        rows.append(("kill -9 a replica under 3 clients: failed requests", failed, "target 0"))

        with Load(stack, "chat") as load:
            wait_for(lambda: load.ok >= 20, 30, "requests")
            t0 = time.monotonic()
            stack.api.patch(f"/api/v1/deployments/{dep['id']}/", json={"max_batch_size": 8})
            wait_ready(stack, dep["id"], r2=2, timeout=240)
            rollout = time.monotonic() - t0
            mark = load.ok
            wait_for(lambda: load.ok >= mark + 20, 30, "requests after")
        rows.append(("rolling update of 2 replicas under 3 clients: failed",
                     f"{len(load.failures)} of {load.ok + len(load.failures)}",
                     f"switch took {rollout:.1f} s"))  # fmt: skip
        delete(stack, dep["id"])

        auto = deploy(
            stack, name="auto", min_replicas=1, max_replicas=2,
            autoscaling={"target_ongoing_requests": 1, "upscale_delay": 0, "downscale_delay": 5},
        )  # fmt: skip
        wait_ready(stack, auto["id"], r1=1)
        with Load(stack, "auto", clients=4, max_tokens=32) as load:
            t0 = time.monotonic()

            def ready_count() -> int:
                replicas = deployment(stack, auto["id"])["replica_set"]
                return sum(r["state"] == "READY" for r in replicas)

            wait_for(lambda: ready_count() >= 2, 120, "scale-up", 0.1)
            reacted = time.monotonic() - t0
        second = max(
            (r for r in deployment(stack, auto["id"])["replica_set"] if r["state"] == "READY"),
            key=lambda r: r["number"],
        )
        rows.append(("autoscale 1 -> 2: load starts -> new replica READY", f"{reacted:.1f} s",
                     f"its own cold start {second['cold_start_seconds']:.1f} s"))  # fmt: skip
        stack.api.patch(f"/api/v1/deployments/{auto['id']}/", json={"min_replicas": 0})
        wait_for(lambda: deployment(stack, auto["id"])["state"] == "IDLE", 120, "idle")
        with gateway(stack) as http:
            body = {"model": "auto", "prompt": PROMPT, "max_tokens": 4}
            t0 = time.monotonic()
            assert http.post("/completions", json=body).status_code == 200
            cold_request = time.monotonic() - t0
            t0 = time.monotonic()
            http.post("/completions", json=body)
            warm_request = time.monotonic() - t0
        rows.append(("scale from zero: first request", f"{cold_request:.1f} s",
                     f"a warm one {warm_request * 1000:.0f} ms"))  # fmt: skip
    finally:
        stack.close()
    print(f"machine load after: {machine_load()}")
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name.ljust(width)}  {value:>14}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
