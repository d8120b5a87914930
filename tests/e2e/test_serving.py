"""Serving deployments end to end: the stack, two worker hosts, a tiny model registered
through the API, replicas placed by the scheduler and reached through the gateway at
``/v1/`` with the official ``openai`` client, while the tests kill replicas, roll out new
revisions, split traffic to a canary, autoscale to zero and back, and borrow CPU slots from
a low-priority training job.

The tests of this module share one stack and run in order (each leaves the cluster empty
for the next)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest

from tests.e2e.stack import ADMIN_PASSWORD, ROOT, Stack
from tests.e2e.test_jobs import TERMINAL, attempts, logs, wait_for, wait_state

pytestmark = pytest.mark.e2e
PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from serving.engine.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny"), "test", train_steps=40)


@pytest.fixture(scope="module")
def stack(model_dir: Path):
    instance = Stack(
        fake_gpus=0,
        extra_env={
            "CP_WORKER_CPU_SLOTS": "0",  # the stack's own worker runs control tasks only
            "CP_JOB_LEASE_SECONDS": "4",
            "CP_JOB_LEASE_RENEW_INTERVAL": "0.5",
            "CP_WORKER_HEARTBEAT_INTERVAL": "0.5",
            "CP_WORKER_OFFLINE_AFTER": "2",
            "CP_JOB_START_TIMEOUT": "20",
            "CP_JOB_STOP_GRACE_SECONDS": "10",
            "CP_SCHEDULER_INTERVAL": "0.5",
            "CP_JOB_RESTART_BACKOFF": "0.5",
            "CP_SERVING_RECONCILE_INTERVAL": "0.5",
            "CP_GATEWAY_REFRESH_SECONDS": "1",
        },
    )
    try:
        instance.start()
        instance.wait_ready()
        for name in ("w-a", "w-b"):
            instance.start_worker(name)
        minted = instance.manage("create_token", "admin", "--name", "e2e")
        assert minted.returncode == 0, minted.stderr
        instance.token = minted.stdout.strip()
        instance.api = httpx.Client(
            base_url=instance.url,
            headers={"Authorization": f"Bearer {instance.token}"},
            timeout=60,
        )
        wait_for(
            lambda: (
                {
                    w["name"]
                    for w in instance.api.get("/api/v1/workers/").json()["results"]
                    if w["status"] == "online"
                }
                >= {"w-a", "w-b"}
            ),
            60,
            "workers online",
        )
        model = instance.api.post("/api/v1/models/", json={"name": "tiny", "project": "default"})
        assert model.status_code == 201, model.text
        upload = instance.api.post(
            f"/api/v1/models/{model.json()['id']}/versions/",
            files={"archive": ("tiny.tar", _tar(model_dir), "application/x-tar")},
        )
        assert upload.status_code == 201, upload.text
        yield instance
    finally:
        instance.close()


@pytest.fixture(scope="module")
def reference(model_dir: Path):
    """Greedy continuations from Hugging Face's own generate (the engine must match)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).eval()

    def greedy(prompt: str, n: int) -> str:
        ids = tokenizer(prompt).input_ids
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([ids]),
                max_new_tokens=n,
                do_sample=False,
                pad_token_id=model.config.eos_token_id,
            )
        return tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)

    return greedy


def _tar(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in sorted(directory.iterdir()):
            archive.add(path, arcname=path.name)
    return buffer.getvalue()


def deploy(stack: Stack, **body) -> dict:
    response = stack.api.post(
        "/api/v1/deployments/", json={"project": "default", "model": "tiny", **body}
    )
    assert response.status_code == 201, response.text
    return response.json()


def deployment(stack: Stack, dep_id: int) -> dict:
    return stack.api.get(f"/api/v1/deployments/{dep_id}/").json()


def events(stack: Stack, dep_id: int) -> str:
    page = stack.api.get(f"/api/v1/deployments/{dep_id}/events/", params={"page_size": 500})
    return "\n".join(e["message"] for e in reversed(page.json()["results"]))


def wait_ready(stack: Stack, dep_id: int, timeout: float = 180, **want) -> dict:
    """Until the deployment is READY with ``want`` (ready replicas per revision number)."""

    def check():
        dep = deployment(stack, dep_id)
        ready = Counter(r["revision"] for r in dep["replica_set"] if r["state"] == "READY")
        live = [r for r in dep["replica_set"] if r["state"] != "READY"]
        wanted = {int(k[1:]): v for k, v in want.items()}
        if dep["state"] == "READY" and (not wanted or (dict(ready) == wanted and not live)):
            return dep
        return None

    try:
        return wait_for(check, timeout, f"deployment {dep_id} to be ready with {want}", 0.5)
    except AssertionError:
        print(deployment(stack, dep_id), events(stack, dep_id), sep="\n")
        for name in stack.workers:
            print(f"--- {name}\n{stack.worker_log(name)[-3000:]}")
        raise


def delete(stack: Stack, dep_id: int) -> None:
    assert stack.api.delete(f"/api/v1/deployments/{dep_id}/").status_code == 202
    wait_for(
        lambda: stack.api.get(f"/api/v1/deployments/{dep_id}/").status_code == 404,
        60,
        "the deployment to be gone",
    )


def gateway(stack: Stack, token: str | None = None) -> httpx.Client:
    return httpx.Client(
        base_url=f"{stack.url}/v1",
        headers={"Authorization": f"Bearer {token or stack.token}"},
        timeout=60,
    )


class Load:
    """Clients sending completions through the gateway until stopped; counts outcomes."""

    def __init__(self, stack: Stack, model: str, clients: int = 3, max_tokens: int = 4):
        self.stack, self.model, self.max_tokens = stack, model, max_tokens
        self.ok = 0
        self.failures: list[str] = []
        self.revisions: Counter = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self) -> None:
        with gateway(self.stack) as client:
            while not self._stop.is_set():
                body = {"model": self.model, "prompt": PROMPT, "max_tokens": self.max_tokens}
                try:
                    response = client.post("/completions", json=body)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                # (sampled at temperature 1, a completion may stop at once: empty text)
                if response.status_code == 200 and "text" in response.json()["choices"][0]:
                    self.ok += 1
                    self.revisions[response.headers["x-cp-revision"]] += 1
                else:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")


def replica_processes(model: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "serving.replica" in cmd and model in cmd and "workers.guard" not in cmd:
            found.append(proc)
    return found


def test_a_deployment_serves_the_openai_api_through_the_gateway(stack, reference):
    from openai import NotFoundError, OpenAI

    dep = deploy(stack, name="chat", replicas=2, cpus_per_replica=1, max_batch_size=8)
    assert dep["state"] == "DEPLOYING" and dep["version"] == 1
    dep = wait_ready(stack, dep["id"], r1=2)
    assert len({r["endpoint"] for r in dep["replica_set"]}) == 2
    assert {r["worker_name"] for r in dep["replica_set"]} <= {"w-a", "w-b"}
    assert all(r["cold_start_seconds"] > 0 for r in dep["replica_set"])
    # The replicas are jobs the scheduler placed: they hold CPU slots on the inventory.
    job = stack.api.get(f"/api/v1/jobs/{dep['replica_set'][0]['job']}/").json()
    assert job["state"] == "RUNNING"

    client = OpenAI(base_url=f"{stack.url}/v1", api_key=stack.token, max_retries=0)
    assert "chat" in [m.id for m in client.models.list()]
    done = client.completions.create(model="chat", prompt=PROMPT, max_tokens=12, temperature=0)
    assert done.choices[0].text == reference(PROMPT, 12)
    streamed = client.completions.create(
        model="chat", prompt=PROMPT, max_tokens=12, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == reference(PROMPT, 12)
    chat = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
    )
    assert sum(1 for c in chat if c.choices and c.choices[0].delta.content) >= 1

    # cpctl streams through the same gateway.
    env = {"CP_URL": stack.url, "CP_TOKEN": stack.token, "PATH": "/usr/bin:/bin"}
    cli = [sys.executable, "-m", "cpctl"]
    run = subprocess.run(
        [*cli, "generate", "chat", PROMPT, "--max-tokens", "12", "--temperature", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip() == reference(PROMPT, 12).strip(), run
    listed = subprocess.run(
        [*cli, "deployments"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert "chat" in listed.stdout and "READY" in listed.stdout, listed

    # Both replicas take requests.
    with gateway(stack) as http:
        served = Counter(
            http.post(
                "/completions", json={"model": "chat", "prompt": "a", "max_tokens": 1}
            ).headers["x-cp-replica"]
            for _ in range(30)
        )
    assert len(served) == 2, served

    # /metrics has the deployment's series (from its replicas) and the gateway's own.
    def scraped():
        text = httpx.get(f"{stack.url}/metrics").text
        return text if 'cp_deployment_requests_total{deployment="chat"' in text else None

    text = wait_for(scraped, 20, "the deployment's series in /metrics")
    assert 'cp_deployment_replicas{deployment="chat",project="default",state="READY"} 2' in text
    assert 'cp_deployment_time_to_first_token_seconds_count{deployment="chat"' in text
    assert 'cp_gateway_requests_total{deployment="chat",status="200"}' in text

    # Another project's user sees nothing: a 404 in OpenAI's format, for a real name too.
    made = stack.manage(
        "shell", "-c",
        "from django.contrib.auth.models import User; User.objects.create_user('outsider')",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    outsider = stack.manage("create_token", "outsider", "--name", "e2e").stdout.strip()
    other = OpenAI(base_url=f"{stack.url}/v1", api_key=outsider, max_retries=0)
    assert [m.id for m in other.models.list()] == []
    with pytest.raises(NotFoundError) as caught:
        other.completions.create(model="chat", prompt=PROMPT, max_tokens=2)
    assert "does not exist" in str(caught.value)
    assert stack.api.get(f"/api/v1/deployments/{dep['id']}/").status_code == 200
    bad = httpx.get(
        f"{stack.url}/api/v1/deployments/{dep['id']}/",
        headers={"Authorization": f"Bearer {outsider}"},
    )
    assert bad.status_code == 404
    # The gateway bounds what it reads: too large is a 413, nested too deep a 400.
    v1 = httpx.Client(
        base_url=f"{stack.url}/v1", headers={"Authorization": f"Bearer {stack.token}"}
    )
    huge = v1.post("/completions", content=b"x" * (2 * 1024 * 1024))
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    deep = v1.post("/completions", content=b"[" * 100_000 + b"]" * 100_000)
    assert deep.status_code == 400 and "nested" in deep.json()["error"]["message"]


def test_a_replica_killed_under_load_fails_no_request_and_comes_back(stack):
    dep = next(
        d for d in stack.api.get("/api/v1/deployments/").json()["results"] if d["name"] == "chat"
    )
    with Load(stack, "chat") as load:
        wait_for(lambda: load.ok >= 10, 30, "requests to flow")
        victims = replica_processes("chat")
        assert len(victims) == 2, victims
        victims[0].kill()  # SIGKILL: a crash, mid-request
        killed_at = load.ok
        wait_for(lambda: "ended failed" in events(stack, dep["id"]), 30, "the crash to be recorded")
        wait_ready(stack, dep["id"], r1=2, timeout=120)
        wait_for(lambda: load.ok >= killed_at + 20, 30, "requests after the restart")
    assert load.failures == [], load.failures[:5]
    text = events(stack, dep["id"])
    assert "ended failed" in text and "restart 1 of 5 in" in text, text
    restarted = [r for r in deployment(stack, dep["id"])["replica_set"] if r["attempt"] == 2]
    assert len(restarted) == 1


def test_a_rolling_update_and_a_canary_fail_no_request(stack):
    dep = next(
        d for d in stack.api.get("/api/v1/deployments/").json()["results"] if d["name"] == "chat"
    )
    dep_id = dep["id"]
    with Load(stack, "chat") as load:
        wait_for(lambda: load.ok >= 5, 30, "requests to flow")
        changed = stack.api.patch(f"/api/v1/deployments/{dep_id}/", json={"max_batch_size": 4})
        assert changed.status_code == 200, changed.text
        assert changed.json()["revision"]["number"] == 2
        wait_ready(stack, dep_id, r2=2, timeout=240)
        at_switch = load.ok
        wait_for(lambda: load.ok >= at_switch + 10, 30, "requests after the rollout")
    assert load.failures == [], load.failures[:5]
    assert load.revisions["1"] > 0 and load.revisions["2"] > 0
    text = events(stack, dep_id)
    assert "Rolling out revision 2" in text and "a replica of the new revision is ready" in text

    # A canary of 25% on a third revision, beside the two replicas of revision 2.
    canary = stack.api.patch(
        f"/api/v1/deployments/{dep_id}/",
        json={"canary": {"percent": 25, "replicas": 1, "max_batch_size": 2}},
    )
    assert canary.status_code == 200, canary.text
    assert canary.json()["canary"]["number"] == 3
    wait_ready(stack, dep_id, r2=2, r3=1, timeout=180)
    with Load(stack, "chat", clients=4, max_tokens=1) as load:
        wait_for(lambda: load.ok >= 600, 240, "600 requests")
    assert load.failures == []
    share = load.revisions["3"] / (load.revisions["2"] + load.revisions["3"])
    retries = [x for x in httpx.get(f"{stack.url}/metrics").text.splitlines() if "retries" in x]
    assert 0.19 <= share <= 0.31, (load.revisions, retries, stack.log()[-3000:])

    with Load(stack, "chat") as load:
        promoted = stack.api.post(f"/api/v1/deployments/{dep_id}/promote/")
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["revision"]["number"] == 3 and promoted.json()["canary"] is None
        wait_ready(stack, dep_id, r3=2, timeout=240)
    assert load.failures == [], load.failures[:5]
    assert set(load.revisions) <= {"2", "3"}
    nothing = stack.api.post(f"/api/v1/deployments/{dep_id}/promote/")
    assert nothing.status_code == 409 and "no canary" in nothing.json()["detail"]
    delete(stack, dep_id)
    assert replica_processes("chat") == []


def test_autoscaling_goes_to_zero_and_a_request_wakes_it(stack):
    dep = deploy(
        stack,
        name="auto",
        min_replicas=0,
        max_replicas=2,
        autoscaling={"target_ongoing_requests": 1, "upscale_delay": 0, "downscale_delay": 3},
    )
    dep_id = dep["id"]
    wait_for(lambda: deployment(stack, dep_id)["state"] == "IDLE", 120, "scale to zero")
    assert replica_processes("auto") == []
    # A request to a deployment with no replica waits while one starts (a cold start).
    with gateway(stack) as http:
        started = time.monotonic()
        try:
            response = http.post(
                "/completions", json={"model": "auto", "prompt": PROMPT, "max_tokens": 3}
            )
        except httpx.ReadTimeout:
            print(deployment(stack, dep_id), events(stack, dep_id), sep="\n")
            raise
        waited = time.monotonic() - started
    assert response.status_code == 200, response.text
    woken = deployment(stack, dep_id)
    [replica] = [r for r in woken["replica_set"] if r["state"] == "READY"]
    assert 0 < replica["cold_start_seconds"] <= waited
    # Four clients at a target of one request in flight per replica: up to max (2).
    with Load(stack, "auto", clients=4, max_tokens=32) as load:
        wait_for(
            lambda: (
                deployment(stack, dep_id)["stats"].get("ready", 0) >= 2
                or sum(r["state"] == "READY" for r in deployment(stack, dep_id)["replica_set"]) >= 2
            ),
            120,
            "a scale-up to 2",
        )
    assert load.failures == [], load.failures[:5]
    wait_for(lambda: deployment(stack, dep_id)["state"] == "IDLE", 60, "back to zero")
    text = events(stack, dep_id)
    assert "Scaling up 1 -> 2" in text and text.count("Scaling to zero") == 2, text
    delete(stack, dep_id)


CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (apt-get install chromium)")
def test_a_browser_deploys_from_the_models_page_and_the_playground_streams(stack, reference):
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="cp-chromium-")
    errors: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True,
                args=["--headless", "--no-sandbox", "--disable-gpu",
                      "--disable-background-networking", "--disable-component-update"],
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
            page.goto(f"{stack.url}/models/")
            form = page.locator("form.deploy").first
            form.locator("input[name=name]").fill("web")
            form.locator("button[type=submit]").click()
            page.wait_for_url("**/deployments/*/")
            dep_id = int(page.url.rstrip("/").split("/")[-1])
            # The page follows the deployment live until its replica is ready.
            try:
                page.wait_for_function(
                    "() => document.getElementById('state').textContent === 'ready'",
                    timeout=120_000,
                )
            except Exception:
                print(page.locator("#conn").inner_text(), page.locator("#state").inner_text(),
                      errors, deployment(stack, dep_id)["state"])  # fmt: skip
                raise
            assert page.locator("#conn").inner_text() == "live"
            page.wait_for_function(
                "() => document.querySelectorAll('#replicas tbody tr .state.ready').length === 1",
                timeout=15_000,
            )
            page.fill("#pg-prompt", PROMPT)
            page.fill("#pg-max", "12")
            page.click("#pg-go")
            page.wait_for_function(
                "() => document.getElementById('pg-out').dataset.done === '1'", timeout=60_000
            )
            assert page.locator("#pg-out").inner_text() == reference(PROMPT, 12).strip() or (
                page.locator("#pg-out").text_content() == reference(PROMPT, 12)
            )
            assert "served by r1" in page.locator("#pg-info").inner_text()
            # Its figures arrive live once the controller has scraped the request.
            page.wait_for_function(
                "() => document.getElementById('f-ready').textContent === '1.0'", timeout=15_000
            )
            # Its devices live (a CPU replica: its processes' CPU), and the CPU-seconds per 1k
            # generated tokens once the agent has stored the replica's usage.
            page.wait_for_function(
                "() => /r1.*CPU.*% CPU/.test(document.querySelector('#devices tbody').textContent)",
                timeout=20_000,
            )
            page.wait_for_function(
                "() => parseFloat(document.getElementById('f-energy').textContent) > 0",
                timeout=40_000,
            )
            assert page.locator("#f-energy-unit").inner_text() == "CPU-s per 1k tokens"
            assert "no energy counter" in page.locator("#energy-basis").inner_text()
            page.once("dialog", lambda dialog: dialog.accept())
            page.click("button.danger")
            page.wait_for_url(f"{stack.url}/deployments/")
            browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert errors == []
    wait_for(
        lambda: stack.api.get(f"/api/v1/deployments/{dep_id}/").status_code == 404,
        60,
        "the deployment to be gone",
    )


def batch(stack: Stack, rows: list[dict], **spec) -> dict:
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    response = stack.api.post(
        "/api/v1/batch-jobs/",
        data={"spec": json.dumps({"project": "default", "model": "tiny", **spec})},
        files={"input": ("prompts.jsonl", body, "application/jsonl")},
    )
    assert response.status_code == 201, response.text
    return response.json()


def batch_output(stack: Stack, job_id: int) -> list[dict]:
    response = stack.api.get(f"/api/v1/batch-jobs/{job_id}/output/")
    assert response.status_code == 200
    return [json.loads(line) for line in response.text.splitlines()]


def test_batch_inference_is_sharded_and_equals_the_engine(stack, reference):
    prompts = [f"Story {i}: once" for i in range(24)]
    made = batch(
        stack, [{"prompt": p, "id": f"p{i}"} for i, p in enumerate(prompts)],
        name="batch-2", nodes=2, max_tokens=8,
    )  # fmt: skip
    assert made["rows"] == 24
    done = wait_state(stack, made["id"], TERMINAL, timeout=180)
    assert done["state"] == "SUCCEEDED", logs(stack, made["id"])
    assert done["kind"] == "batch"
    assert (done["progress"]["step"], done["progress"]["total"]) == (24, 24)
    runs = attempts(stack, made["id"])
    if len(runs) > 1:  # a restarted shard resumes; say why in the output
        print("batch attempts:", [(a["state"], a["reason"]) for a in runs])
    run = runs[-1]
    assert run["state"] == "SUCCEEDED"
    assert {n["worker"] for n in run["nodes"]} == {"w-a", "w-b"}  # one shard per host
    rows = batch_output(stack, made["id"])
    assert [r["index"] for r in rows] == list(range(24))
    assert [r["id"] for r in rows] == [f"p{i}" for i in range(24)]
    assert [r["text"] for r in rows] == [reference(p, 8) for p in prompts]
    # Bad input is refused with the line that is wrong, and nothing is created.
    before = len(stack.api.get("/api/v1/batch-jobs/").json()["results"])
    bad = stack.api.post(
        "/api/v1/batch-jobs/",
        data={"spec": json.dumps({"model": "tiny"})},
        files={"input": ("p.jsonl", b'{"prompt": "a"}\n{"promt": "b"}\n', "application/jsonl")},
    )
    assert bad.status_code == 400 and "Line 2" in bad.json()["input"][0], bad.text
    assert len(stack.api.get("/api/v1/batch-jobs/").json()["results"]) == before


def test_a_killed_batch_job_resumes_without_duplicating_or_skipping_rows(stack, reference):
    prompts = [f"Row {i} says" for i in range(160)]
    made = batch(
        stack, [{"prompt": p} for p in prompts], name="batch-kill", max_tokens=24,
        max_batch_size=2,
    )  # fmt: skip
    job_id = made["id"]
    wait_for(
        lambda: stack.api.get(f"/api/v1/batch-jobs/{job_id}/").json()["rows_written"] >= 20,
        120,
        "rows to be written",
    )
    [runner] = [
        p for p in psutil.process_iter(["cmdline"])
        if "serving.batch" in (p.info["cmdline"] or []) and "workers.guard" not in p.info["cmdline"]
    ]  # fmt: skip
    runner.kill()
    done = wait_state(stack, job_id, TERMINAL, timeout=300)
    assert done["state"] == "SUCCEEDED", logs(stack, job_id)
    states = [a["state"] for a in attempts(stack, job_id)]
    # The kill is a failed attempt; on PostgreSQL an attempt is sometimes LOST at start
    # (its lease lapsed while the shard loaded: see the closing notes of issue 11).
    assert states[-1] == "SUCCEEDED" and "FAILED" in states, states
    assert "resuming after" in logs(stack, job_id)
    rows = batch_output(stack, job_id)
    assert [r["index"] for r in rows] == list(range(160))
    for i in (0, 1, 79, 158, 159):
        assert rows[i]["text"] == reference(prompts[i], 24)


def test_a_deployment_borrows_cpu_slots_from_low_priority_training(stack):
    # The training job takes every slot of both hosts (2 nodes x 2 processes).
    response = stack.api.post(
        "/api/v1/jobs/",
        json={
            "name": "borrowed",
            "project": "default",
            "priority": "low",
            "entrypoint": ["python", "-m", "workers.recipes.causal_lm"],
            "args": ["--max-steps", "400", "--seq-len", "32", "--micro-batch", "1",
                     "--log-every", "5", "--checkpoint-every", "5"],
            "resources": {"nodes": 2, "procs_per_node": 2},
            "max_restarts": 0,
        },
    )  # fmt: skip
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    wait_for(
        lambda: stack.api.get(f"/api/v1/jobs/{job_id}/checkpoints/").json(),
        180,
        "the training job to checkpoint",
    )
    dep = deploy(stack, name="urgent", replicas=1, priority="high")
    wait_ready(stack, dep["id"], r1=1, timeout=180)
    training = stack.api.get(f"/api/v1/jobs/{job_id}/").json()
    assert training["state"] == "PENDING" and training["preemptions"] >= 1, training
    with gateway(stack) as http:
        ok = http.post("/completions", json={"model": "urgent", "prompt": "a", "max_tokens": 2})
    assert ok.status_code == 200, ok.text
    # Scaling to zero... deleting gives the slots back: the training job resumes.
    delete(stack, dep["id"])
    wait_for(
        lambda: stack.api.get(f"/api/v1/jobs/{job_id}/").json()["state"] == "RUNNING",
        120,
        "the training job to resume",
    )
    runs = attempts(stack, job_id)
    states = [a["state"] for a in runs]
    # On PostgreSQL an attempt is sometimes LOST at start (see issue 11's closing notes).
    assert "PREEMPTED" in states and states[-1] == "RUNNING", states
    assert runs[-1]["resume_from"], runs[-1]
    stack.api.post(f"/api/v1/jobs/{job_id}/cancel/")
    wait_state(stack, job_id, TERMINAL, timeout=60)
