"""The whole stack, as ``make run`` starts it: real Redis, uvicorn, a Celery worker, beat."""

from __future__ import annotations

import json
import re
import time

import httpx
import psutil
import pytest
from celery import Celery
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.e2e.stack import ADMIN_PASSWORD, Stack
from tests.e2e.test_jobs import attempts, logs, submit, wait_for, wait_state

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack():
    # A low per-user rate, so that throttling can be seen within the test.
    instance = Stack(fake_gpus=2, extra_env={"CP_THROTTLE_USER": "40/min"})
    yield instance
    instance.close()


def login(client: httpx.Client, password: str) -> None:
    client.get("/login/")
    response = client.post(
        "/login/",
        data={
            "username": "admin",
            "password": password,
            "csrfmiddlewaretoken": client.cookies["csrftoken"],
        },
    )
    assert response.status_code == 302, response.text


def check_celery_round_trip(stack: Stack) -> None:
    app = Celery(broker=stack.broker_url, backend=stack.redis_url)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    try:
        result = app.send_task("workers.ping", args=["hello"], queue=f"host.{stack.hostname}")
        answer = result.get(timeout=30)
    finally:
        app.close()
    assert answer["host"] == stack.hostname and answer["echo"] == "hello"


def check_websocket(stack: Stack, token: str) -> None:
    uri = f"ws://127.0.0.1:{stack.http_port}/ws/ping/"
    headers = {"Authorization": f"Bearer {token}"}
    with connect(uri, additional_headers=headers, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "ping", "id": 1}))
        reply = json.loads(ws.recv(timeout=10))
    assert (reply["type"], reply["id"], reply["user"]) == ("pong", 1, "admin")
    with pytest.raises(InvalidStatus) as refused:
        connect(uri, additional_headers=headers, origin="https://evil.example", open_timeout=10)
    assert refused.value.response.status_code == 403


def test_the_stack_boots_serves_and_stops_cleanly_then_restarts_on_the_same_data(stack):
    stack.start()
    ready = stack.wait_ready()
    assert ready["checks"]["workers"]["online"] == [stack.hostname]
    assert ready["checks"]["redis"]["embedded"] is ("REDIS_URL" not in stack.env)
    stack.wait_for_output(f"Ready. Dashboard: {stack.url}/")

    # The worker registered its (fake) GPUs through NVML.
    minted = stack.manage("create_token", "admin", "--name", "e2e")
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    api = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {token}"})
    [worker] = api.get("/api/v1/workers/").json()["results"]
    assert worker["status"] == "online" and len(worker["gpus"]) == 2
    assert api.get("/api/v1/projects/").json()["results"][0]["name"] == "default"
    created = api.post("/api/v1/projects/", json={"name": "kept-across-restarts"})
    assert created.status_code == 201, created.text

    check_celery_round_trip(stack)
    check_websocket(stack, token)

    # The browser path: log in, see the worker and its GPUs on the home page.
    with httpx.Client(base_url=stack.url) as browser:
        login(browser, ADMIN_PASSWORD)
        page = browser.get("/").text
        assert stack.hostname in page and "H100" in page and "kept-across-restarts" in page
        assert browser.get("/admin/").status_code == 200
        css = browser.get("/static/admin/css/base.css")
        assert css.status_code == 200 and "body" in css.text
        # Static files have hashed names, go out gzipped and are cached for good: a
        # browser fetches plotly.js (4.8 MB) once per version.
        telemetry = browser.get("/telemetry/").text
        [plotly] = re.findall(r'src="(/static/vendor/plotly\.min\.[0-9a-f]{12}\.js)"', telemetry)
        script = browser.get(plotly, headers={"Accept-Encoding": "gzip"})
        assert script.status_code == 200 and script.headers["Content-Encoding"] == "gzip"
        assert int(script.headers["Content-Length"]) < 2_000_000  # of 4.8 MB
        age = re.search(r"max-age=(\d+)", script.headers["Cache-Control"])
        assert age and int(age.group(1)) >= 365 * 24 * 3600, script.headers["Cache-Control"]

    # Per-user throttling answers 429 with a Retry-After.
    statuses = [api.get("/api/v1/projects/").status_code for _ in range(45)]
    assert 429 in statuses
    limited = api.get("/api/v1/projects/")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    api.close()

    # Ctrl-C stops every process it started.
    children = stack.processes()
    names = " ".join(" ".join(p.cmdline()) for p in children)
    assert "uvicorn" in names and "worker" in names and "beat" in names
    assert stack.interrupt() == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], [p.cmdline() for p in alive]
    leftovers = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if stack.hostname in " ".join(p.info["cmdline"] or [])
        or str(stack.var_dir) in " ".join(p.info["cmdline"] or [])
    ]
    assert leftovers == []

    # Running it again reuses the database: same project, no new admin password.
    stack.start()
    stack.wait_ready()
    assert "shown only this once" not in stack.log()
    with httpx.Client(base_url=stack.url) as browser:
        login(browser, ADMIN_PASSWORD)
        assert "kept-across-restarts" in browser.get("/").text
    assert stack.interrupt() == 0
    assert re.search(r"stopped: worker \(exit status 0\)", stack.log())


@pytest.fixture
def healing_stack():
    # Jobs run on the stack's own worker (the "local training jobs" of `make run`).
    instance = Stack(
        fake_gpus=0,
        extra_env={
            "CP_WORKER_CPU_SLOTS": "2",
            "CP_JOB_LEASE_SECONDS": "4",
            "CP_JOB_LEASE_RENEW_INTERVAL": "0.5",
            "CP_WORKER_HEARTBEAT_INTERVAL": "0.5",
            "CP_WORKER_OFFLINE_AFTER": "3",
            "CP_SCHEDULER_INTERVAL": "0.5",
        },
    )
    yield instance
    instance.close()


def kill_and_wait_for_restart(stack: Stack, name: str) -> float:
    """kill -9 the stack's process ``name``; seconds until a new one runs and /readyz is
    green again."""
    old = stack.program_pid(name)
    assert old, stack.supervisorctl("status")
    psutil.Process(old).kill()
    started = time.monotonic()
    wait_for(lambda: stack.program_pid(name) not in (0, old), 60, f"{name} to be restarted")
    stack.wait_ready(timeout=60)
    return time.monotonic() - started


def test_the_stack_restarts_a_killed_process_and_a_running_job_survives(healing_stack):
    stack = healing_stack
    stack.start()
    stack.wait_ready()
    minted = stack.manage("create_token", "admin", "--name", "e2e")
    assert minted.returncode == 0, minted.stderr
    stack.api = httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {minted.stdout.strip()}"}
    )
    created = submit(
        stack,
        name="survivor",
        entrypoint=["python", "trainer.py"],
        env={"STEPS": "120", "STEP_SECONDS": "0.25"},
    )
    wait_for(lambda: "step 2" in logs(stack, created["id"]), 60, "the job to run")

    # Each of these dies and comes back on its own; the job keeps its one attempt.
    names = ["web", "beat"] + (["redis"] if "REDIS_URL" not in stack.env else [])
    recovery = {name: kill_and_wait_for_restart(stack, name) for name in names}
    assert all(seconds < 30 for seconds in recovery.values()), recovery
    assert stack.api.get(f"/api/v1/jobs/{created['id']}/").json()["state"] == "RUNNING"
    finished = wait_state(stack, created["id"], {"SUCCEEDED", "FAILED", "CANCELLED"})
    assert finished["state"] == "SUCCEEDED", finished
    assert len(attempts(stack, created["id"])) == 1
    text = logs(stack, created["id"])
    assert "finished all steps" in text and "resumed from" not in text

    # A killed worker comes back too, and takes the work it lost up again.
    second = submit(
        stack,
        name="resumer",
        entrypoint=["python", "trainer.py"],
        env={"STEPS": "40", "STEP_SECONDS": "0.25"},
        max_restarts=2,
    )
    wait_for(lambda: "step 3" in logs(stack, second["id"]), 60, "the second job to run")
    killed = time.monotonic()
    recovery["worker"] = kill_and_wait_for_restart(stack, "worker")
    wait_for(lambda: len(attempts(stack, second["id"])) == 2, 60, "the job to run again")
    recovery["job resumed"] = time.monotonic() - killed
    finished = wait_state(stack, second["id"], {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=120)
    assert finished["state"] == "SUCCEEDED", finished
    assert "resumed from" in logs(stack, second["id"])
    assert [a["state"] for a in attempts(stack, second["id"])] == ["LOST", "SUCCEEDED"]
    # The other processes were never restarted: supervisord restarted only what died.
    status = stack.supervisorctl("status")
    assert status.count("RUNNING") == len(names) + 1, status
    print(f"recovery seconds: {recovery}")
