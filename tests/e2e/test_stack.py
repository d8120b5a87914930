"""The whole stack, as ``make run`` starts it: real Redis, uvicorn, a Celery worker, beat."""

from __future__ import annotations

import json
import re

import httpx
import psutil
import pytest
from celery import Celery
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.e2e.stack import ADMIN_PASSWORD, Stack

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
    assert re.search(r"worker stopped \(rc=0\)", stack.log())
