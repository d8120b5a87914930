"""Telemetry end to end on real processes: the stack (uvicorn, a Celery worker whose agent
thread samples the FAKE NVML, Redis, beat), websocket clients, two projects' jobs on the
fake GPUs, /metrics, the history API, and a real headless Chromium on the dashboards."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.e2e.stack import ADMIN_PASSWORD, ROOT, Stack

pytestmark = pytest.mark.e2e
INTERVAL = 0.25
SCRAPE_TOKEN = "e2e-scrape-token-123"
GPUS = [{"pci_bus_id": "00000000:1B:00.0"}, {"pci_bus_id": "00000000:2C:00.0"}]
ARTIFACTS = Path(os.environ.get("CP_TEST_ARTIFACTS", ROOT / "var" / "test-artifacts"))
CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)

SETUP = """
import json
from django.contrib.auth import get_user_model
from controlplane.tenancy import services
from controlplane.tenancy.models import Membership, Project, Role
out = {}
for name, project in (("alice", "alpha"), ("dave", "beta")):
    user = get_user_model().objects.create_user(name, password=name + "-pass-123")
    team = Project.objects.create(name=project)
    Membership.objects.create(user=user, project=team, role=Role.ADMIN)
    out[name] = services.create_token(services.Actor.system(), user, "e2e")[1]
print(json.dumps(out))
"""


def wait_for(check, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def stack():
    instance = Stack(
        fake_gpus=2,
        extra_env={
            "FAKE_NVML_GPUS": json.dumps(GPUS),
            "CP_TELEMETRY_INTERVAL": str(INTERVAL),
            "CP_TELEMETRY_HISTORY_STEP": "1",
            "CP_METRICS_TOKEN": SCRAPE_TOKEN,
            "CP_METRICS_LOOPBACK_OPEN": "false",
            "CP_JOB_BUILTIN_MODULES": "workers.recipes.,tests.monitoring.gpu_sleeper",
            "CP_JOB_LEASE_SECONDS": "6",
            "CP_JOB_LEASE_RENEW_INTERVAL": "0.5",
            "CP_JOB_STOP_GRACE_SECONDS": "3",
            "CP_SCHEDULER_INTERVAL": "0.5",
        },
    )
    try:
        instance.start()
        instance.wait_ready()
        minted = instance.manage("create_token", "admin", "--name", "e2e")
        assert minted.returncode == 0, minted.stderr
        setup = instance.manage("shell", "-c", SETUP)
        assert setup.returncode == 0, setup.stderr
        instance.tokens = {
            "admin": minted.stdout.strip(),
            **json.loads(setup.stdout.strip().splitlines()[-1]),
        }
        instance.client = {
            name: httpx.Client(
                base_url=instance.url, headers={"Authorization": f"Bearer {t}"}, timeout=30
            )
            for name, t in instance.tokens.items()
        }
        [worker] = instance.client["admin"].get("/api/v1/workers/").json()["results"]
        instance.worker = worker
        instance.jobs = {}
        for user, project in (("alice", "alpha"), ("dave", "beta")):
            response = instance.client[user].post(
                "/api/v1/jobs/",
                json={
                    "name": f"{project}-secret-run",
                    "project": project,
                    "entrypoint": ["python", "-m", "tests.monitoring.gpu_sleeper"],
                    "resources": {"nodes": 1, "gpus_per_node": 1},
                    "max_restarts": 0,
                },
            )
            assert response.status_code == 201, response.text
            instance.jobs[project] = response.json()["id"]
        yield instance
    finally:
        print(instance.log()[-6000:])
        instance.close()


def ws(stack: Stack, path: str, user: str = "admin", **kwargs):
    headers = {"Authorization": f"Bearer {stack.tokens[user]}"}
    return connect(f"ws://127.0.0.1:{stack.http_port}{path}", additional_headers=headers,
                   open_timeout=10, **kwargs)  # fmt: skip


def job_state(stack: Stack, project: str) -> str:
    user = "alice" if project == "alpha" else "dave"
    return stack.client[user].get(f"/api/v1/jobs/{stack.jobs[project]}/").json()["state"]


def running(stack: Stack) -> None:
    wait_for(
        lambda: all(job_state(stack, p) == "RUNNING" for p in ("alpha", "beta")),
        60,
        "both jobs to run",
    )


def test_a_websocket_client_receives_host_frames_at_the_configured_rate(stack):
    with ws(stack, f"/ws/telemetry/hosts/{stack.worker['id']}/") as socket:
        snapshot = json.loads(socket.recv(timeout=10))
        assert snapshot["type"] == "snapshot" and snapshot["interval"] == INTERVAL
        samples, start = [], time.monotonic()
        while time.monotonic() - start < 3.0:
            message = json.loads(socket.recv(timeout=5))
            if message["type"] == "sample":
                samples.append(message)
    # 12 expected at 0.25 s; a loaded machine may make the agent skip a late tick.
    assert 7 <= len(samples) <= 16, len(samples)
    seqs = [s["seq"] for s in samples]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # none dropped or reordered
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(samples)]
    assert abs(sum(gaps) / len(gaps) - INTERVAL) < 0.3 * INTERVAL, gaps
    frame = samples[-1]
    assert [g["pci_bus_id"] for g in frame["gpus"]] == [g["pci_bus_id"] for g in GPUS]
    assert frame["host_metrics"]["cpu_count"] >= 1 and frame["agent"]["cpu_percent"] > 0


def test_unauthenticated_clients_and_foreign_origins_are_refused(stack):
    url = f"ws://127.0.0.1:{stack.http_port}/ws/telemetry/"
    with pytest.raises(InvalidStatus) as anonymous:
        connect(url, open_timeout=10)
    with pytest.raises(InvalidStatus) as foreign:
        ws(stack, "/ws/telemetry/", origin="https://evil.example")
    assert anonymous.value.response.status_code == 403
    assert foreign.value.response.status_code == 403


def test_a_member_of_one_project_receives_nothing_about_anothers_jobs(stack):
    running(stack)
    alpha, beta = stack.jobs["alpha"], stack.jobs["beta"]
    texts = []
    with ws(stack, "/ws/telemetry/", user="dave") as socket:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            texts.append(socket.recv(timeout=5))
            sample = json.loads(texts[-1])
            if sample["type"] == "sample" and len(sample["holders"]) == 1 and len(texts) > 4:
                break
    assert all("alpha-secret-run" not in t and "alpha" not in t for t in texts)
    holders = {g["index"]: g["holder"] for g in sample["gpus"]}
    assert {"kind": "job", "hidden": True} in holders.values()
    assert [h["id"] for h in sample["holders"]] == [beta]
    with pytest.raises(InvalidStatus) as refused:
        ws(stack, f"/ws/telemetry/jobs/{alpha}/", user="dave")
    assert refused.value.response.status_code == 403
    assert stack.client["dave"].get(f"/api/v1/jobs/{alpha}/telemetry/").status_code == 404

    # Alice's job socket: her GPU, her job's processes (pids from its launcher), energy.
    def attributed():
        with ws(stack, f"/ws/telemetry/jobs/{alpha}/", user="alice") as socket:
            for _ in range(8):
                message = json.loads(socket.recv(timeout=5))
                if message["type"] == "holder_sample" and message["gpus"][0]["processes"]:
                    return message
        return None

    mine = wait_for(attributed, 30, "alice's job processes to be attributed")
    assert all(p["holder"] == ["job", alpha] for p in mine["gpus"][0]["processes"])
    assert mine["usage"]["energy_j"] > 0 and mine["usage"]["project"] == "alpha"


def test_energy_is_kept_with_the_job_when_it_ends(stack):
    running(stack)
    alice = stack.client["alice"]
    alpha = stack.jobs["alpha"]
    time.sleep(1.5)  # at least one history step written
    assert alice.post(f"/api/v1/jobs/{alpha}/cancel/").status_code in (200, 202)
    wait_for(lambda: job_state(stack, "alpha") == "CANCELLED", 60, "the job to stop")
    readings: list[float] = []

    def settled() -> bool:  # the agent notices within a second and writes within a step
        readings.append(alice.get(f"/api/v1/jobs/{alpha}/telemetry/").json()["usage"]["joules"])
        return len(readings) >= 2 and readings[-1] == readings[-2] > 0

    wait_for(settled, 15, "the job's energy to be final", interval=1.5)
    kept = alice.get(f"/api/v1/jobs/{alpha}/telemetry/").json()
    assert kept["state"] == "CANCELLED" and kept["samples"] == []
    usage = kept["usage"]
    assert usage["joules"] == readings[-1]
    assert usage["kwh"] == pytest.approx(usage["joules"] / 3.6e6)
    assert usage["gpu_seconds"] > 0 and usage["hosts"][0]["worker"] == stack.hostname
    # The fake GPU draws 100-300 W: the energy matches the time the job held it.
    assert 100 <= usage["joules"] / usage["gpu_seconds"] <= 300


def test_metrics_need_the_scrape_token_and_carry_dcgm_names(stack):
    running_beta = wait_for(lambda: job_state(stack, "beta") == "RUNNING", 60, "beta job")
    assert running_beta
    assert httpx.get(f"{stack.url}/metrics").status_code == 401
    response = httpx.get(
        f"{stack.url}/metrics", headers={"Authorization": f"Bearer {SCRAPE_TOKEN}"}
    )
    assert response.status_code == 200
    families = {f.name: f.samples for f in text_string_to_metric_families(response.text)}
    for name in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_POWER_USAGE",
                 "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "DCGM_FI_DEV_XID_ERRORS",
                 "cp_jobs", "cp_queue_depth", "cp_job_gpu_utilization_percent"):  # fmt: skip
        assert name in families, name
    util = families["DCGM_FI_DEV_GPU_UTIL"]
    assert {s.labels["Hostname"] for s in util} == {stack.hostname}
    held = [s for s in util if s.labels.get("job") == str(stack.jobs["beta"])]
    assert held and held[0].labels["project"] == "beta"


def test_the_history_api_serves_what_the_agent_wrote(stack):
    admin = stack.client["admin"]
    gpu = stack.worker["gpus"][0]
    now = time.time()
    points = wait_for(
        lambda: admin.get(
            f"/api/v1/gpus/{gpu['id']}/telemetry/", params={"from": now - 120, "step": 1}
        ).json()["points"],
        20,
        "history rows",
    )
    assert points[-1]["util_mean"] is not None and points[-1]["n"] >= 1
    bad = admin.get(f"/api/v1/gpus/{gpu['id']}/telemetry/", params={"step": "-5"})
    assert bad.status_code == 400 and "step" in bad.json()


#: Seconds between a chart's first two points (null before it has two). Waits take a
#: function ("() => ..."): a bare expression is re-evaluated by eval, which the CSP blocks.
SPACING = (
    "(id) => { const d = document.getElementById(id).data;"
    " const x = d && d.length ? d[0].x : [];"
    " return x.length > 1 ? (new Date(x[1]) - new Date(x[0])) / 1000 : null; }"
)


def picker_labels(page) -> list[str]:
    return page.locator("nav.time-range a").all_inner_texts()


def on_range(page) -> str:
    return page.locator("nav.time-range a.on").get_attribute("data-range")


@pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium)"
)
def test_a_real_browser_sees_the_cluster_chart_move_and_the_jobs_energy(stack):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="cp-chromium-")
    errors: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=["--headless", "--no-sandbox", "--disable-gpu",
                      "--disable-background-networking", "--disable-component-update",
                      "--disable-sync"],
            )  # fmt: skip
            page = browser.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # A Content-Security-Policy violation is a console error, not an exception.
            page.on(
                "console", lambda m: m.type == "error" and errors.append(f"{m.text} {m.location}")
            )
            page.goto(f"{stack.url}/login/")
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", ADMIN_PASSWORD)
            page.click("button[type=submit], input[type=submit]")
            page.wait_for_url(f"{stack.url}/")
            page.goto(f"{stack.url}/telemetry/")
            assert page.locator(".tm-tile").count() == 2  # server-rendered, before any script
            read = "() => { const d = document.getElementById('cluster-chart').data;" \
                   " return d && d.length ? [d[0].x.length, String(d[0].x[d[0].x.length - 1])," \
                   " d[0].y[d[0].y.length - 1]] : null; }"  # fmt: skip
            page.wait_for_function(f"() => ({read})() !== null && ({read})()[0] > 2", timeout=15000)
            first = page.evaluate(read)
            page.wait_for_timeout(1500)
            second = page.evaluate(read)
            assert second[1] != first[1], (first, second)  # the chart's data moved on
            names = page.evaluate("document.getElementById('cluster-chart').data.map(t => t.name)")
            assert all(n.endswith(" GPU") for n in names), names  # says what it plots
            assert page.locator("#conn").inner_text() == "live"
            page.screenshot(path=str(ARTIFACTS / "telemetry-cluster.png"), full_page=True)
            # The shared range picker: 1 h redraws the chart from history at 10 s a point,
            # in place, and the URL says so (a view can be shared).
            ranges = picker_labels(page)
            assert ranges == ["15 min", "1 h", "6 h", "24 h", "7 days"], ranges
            page.click("nav.time-range a[data-range='1h']")
            assert "range=1h" in page.url and on_range(page) == "1h"
            page.wait_for_function(f"() => ({SPACING})('cluster-chart') >= 9", timeout=20000)
            page.goto(f"{stack.url}/telemetry/?range=1h")
            assert on_range(page) == "1h"  # rendered by the server
            page.wait_for_function(f"() => ({SPACING})('cluster-chart') >= 9", timeout=20000)

            beta = stack.jobs["beta"]
            page.goto(f"{stack.url}/jobs/{beta}/")
            page.wait_for_function(
                "() => /[0-9.]+ J/.test(document.getElementById('job-energy').textContent)"
                " && document.getElementById('job-util').data?.[0]?.x.length > 1",
                timeout=15000,
            )
            assert picker_labels(page) == ranges  # the same picker
            page.screenshot(path=str(ARTIFACTS / "telemetry-job.png"), full_page=True)
            page.goto(f"{stack.url}/telemetry/hosts/{stack.worker['id']}/")
            page.wait_for_function(
                "() => document.getElementById('chart-util').data?.[0]?.x.length > 1", timeout=15000
            )
            assert picker_labels(page) == ranges and on_range(page) == "15m"
            page.click("nav.time-range a[data-range='1h']")
            assert "range=1h" in page.url and on_range(page) == "1h"
            page.wait_for_function(f"() => ({SPACING})('chart-util') >= 9", timeout=20000)
            page.screenshot(path=str(ARTIFACTS / "telemetry-host.png"), full_page=True)
            browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert errors == []
