"""Training jobs end to end on real processes: the stack, two worker hosts on this machine,
torchrun with gloo on CPU, and the API as a user sees it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.e2e.stack import ROOT, Stack

pytestmark = pytest.mark.e2e
SCRIPTS = Path(__file__).resolve().parent / "job_scripts"
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


def code_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in SCRIPTS.glob("*.py"):
            archive.add(path, arcname=path.name)
    return buffer.getvalue()


def jobs_stack():
    """The stack of this module's tests (and the runtime's): two worker hosts on this
    machine, short leases; a generator for a module-scoped fixture."""
    instance = Stack(
        fake_gpus=0,
        extra_env={
            # The stack's own worker only runs control tasks; jobs go to w-a and w-b.
            "CP_WORKER_CPU_SLOTS": "0",
            "CP_JOB_LEASE_SECONDS": "4",
            "CP_JOB_LEASE_RENEW_INTERVAL": "0.5",
            "CP_WORKER_HEARTBEAT_INTERVAL": "0.5",
            "CP_WORKER_OFFLINE_AFTER": "2",
            "CP_JOB_START_TIMEOUT": "15",
            "CP_JOB_STOP_GRACE_SECONDS": "8",
            "CP_SCHEDULER_INTERVAL": "0.5",
            # uv's wheel cache outlives the test stack: a rerun does not download again.
            "CP_ENV_UV_CACHE_DIR": str(Path.home() / ".cache" / "cp-tests" / "uv"),
            # Webhook receivers in tests listen on loopback; retries come quickly.
            "CP_WEBHOOK_ALLOW_PRIVATE": "true",
            "CP_WEBHOOK_RETRY_SECONDS": "0.5",
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
            timeout=30,
        )
        wait_for(lambda: online(instance) >= {"w-a", "w-b"}, 60, "workers online")
        yield instance
    finally:
        instance.close()


@pytest.fixture(scope="module")
def stack():
    yield from jobs_stack()


def online(stack: Stack) -> set[str]:
    workers = stack.api.get("/api/v1/workers/").json()["results"]
    return {w["name"] for w in workers if w["status"] == "online"}


def wait_for(check, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def submit(stack: Stack, **spec) -> dict:
    body = {"project": "default", "max_restarts": 0, **spec}
    response = stack.api.post(
        "/api/v1/jobs/",
        data={"spec": json.dumps(body)},
        files={"code": ("code.tgz", code_archive(), "application/gzip")},
    )
    assert response.status_code == 201, response.text
    return response.json()


def job(stack: Stack, job_id: int) -> dict:
    return stack.api.get(f"/api/v1/jobs/{job_id}/").json()


def wait_state(stack: Stack, job_id: int, states: set[str], timeout: float = 90) -> dict:
    def check():
        current = job(stack, job_id)
        return current if current["state"] in states else None

    try:
        return wait_for(check, timeout, f"job {job_id} to reach {states}")
    except AssertionError:
        print(json.dumps(job(stack, job_id), indent=1))
        print(logs(stack, job_id))
        for name in stack.workers:
            print(f"--- {name}\n{stack.worker_log(name)[-4000:]}")
        raise


def logs(stack: Stack, job_id: int) -> str:
    text, since = [], 0
    while True:
        page = stack.api.get(f"/api/v1/jobs/{job_id}/logs/", params={"since": since}).json()
        if not page["chunks"]:
            return "".join(text)
        text += [c["text"] for c in page["chunks"]]
        since = page["next"]


def metric(stack: Stack, job_id: int, name: str) -> list[list[float]]:
    return (
        stack.api.get(f"/api/v1/jobs/{job_id}/metrics/", params={"name": name})
        .json()["series"]
        .get(name, [])
    )


def attempts(stack: Stack, job_id: int) -> list[dict]:
    return stack.api.get(f"/api/v1/jobs/{job_id}/attempts/").json()


def holder(stack: Stack, job_id: int) -> str | None:
    """The host running the job's attempt once it has checkpointed step 3, else None."""
    current = attempts(stack, job_id)
    if current and current[-1]["state"] == "RUNNING" and "step 3" in logs(stack, job_id):
        return current[-1]["nodes"][0]["worker"]
    return None


def running_scripts(name: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any(part.endswith(name) for part in cmdline) and "workers.guard" not in cmdline:
            found.append(proc)
    return found


def test_a_two_process_ddp_job_runs_an_unmodified_torchrun_script(stack):
    submitted = submit(
        stack, name="ddp", entrypoint=["python", "ddp.py"], resources={"procs_per_node": 2}
    )
    done = wait_state(stack, submitted["id"], TERMINAL)
    output = logs(stack, submitted["id"])
    assert done["state"] == "SUCCEEDED", output
    assert "rank 0 of 2" in output and "rank 1 of 2" in output
    assert "secrets visible: []" in output
    assert output.count("ranks agree: True") == 2
    loss = metric(stack, submitted["id"], "loss")
    assert [p[0] for p in loss] == list(range(1, 31))
    assert loss[-1][1] < loss[0][1]
    assert (done["progress"]["step"], done["progress"]["total"]) == (30, 30)


def test_the_built_in_recipe_runs_as_a_ddp_job_and_reports_through_the_sdk(stack):
    response = stack.api.post(
        "/api/v1/jobs/",
        json={
            "name": "tiny-lm",
            "project": "default",
            "entrypoint": ["python", "-m", "workers.recipes.causal_lm"],
            "args": ["--max-steps", "12", "--seq-len", "64", "--micro-batch", "2",
                     "--log-every", "3", "--eval-every", "6", "--checkpoint-every", "6"],
            "resources": {"procs_per_node": 2},
            "checkpoint": {"keep": 1},
            "max_restarts": 0,
        },
    )  # fmt: skip
    assert response.status_code == 201, response.text
    done = wait_state(stack, response.json()["id"], TERMINAL, timeout=180)
    assert done["state"] == "SUCCEEDED", logs(stack, done["id"])
    names = stack.api.get(f"/api/v1/jobs/{done['id']}/metrics/").json()["names"]
    assert "loss" in names and any(n.startswith("eval") for n in names), names
    checkpoints = stack.api.get(f"/api/v1/jobs/{done['id']}/checkpoints/").json()
    assert [c["step"] for c in checkpoints] == [12]  # keep: 1
    assert done["progress"]["step"] == 12
    # It offered its exported model, and the registry took it when the job succeeded.
    models = wait_for(
        lambda: stack.api.get("/api/v1/models/", params={"name": "tiny-lm"}).json()["results"],
        30,
        "the final model to be registered",
    )
    versions = stack.api.get(f"/api/v1/models/{models[0]['id']}/versions/").json()
    assert [(v["version"], v["source"], v["job"]) for v in versions] == [(1, "job", done["id"])]
    assert versions[0]["parameter_count"] > 100_000 and "eval_loss" in versions[0]["metrics"]


def test_cpctl_submits_a_directory_and_follows_it(stack, tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("name: hello\nproject: default\nentrypoint: [python, hello.py]\n")
    env = {"CP_URL": stack.url, "CP_TOKEN": stack.token, "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "cpctl", "submit", str(spec), "--dir", str(SCRIPTS), "--follow"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Submitted job" in result.stdout and "hello from job" in result.stdout
    assert "SUCCEEDED" in result.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "cpctl", "jobs"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert "hello" in listed.stdout and "SUCCEEDED" in listed.stdout


def test_a_job_that_always_crashes_fails_after_its_restarts(stack):
    submitted = submit(stack, name="crash", entrypoint=["python", "crash.py"], max_restarts=2)
    done = wait_state(stack, submitted["id"], TERMINAL)
    assert done["state"] == "FAILED" and done["restarts"] == 2 and done["exit_code"] == 3
    assert [a["state"] for a in attempts(stack, submitted["id"])] == ["FAILED"] * 3
    assert logs(stack, submitted["id"]).count("about to crash") == 3


def test_cancel_stops_a_running_job_on_every_node(stack):
    submitted = submit(
        stack,
        name="to-cancel",
        entrypoint=["python", "trainer.py"],
        env={"STEPS": "500", "STEP_SECONDS": "0.2"},
        resources={"nodes": 2},
    )
    wait_for(lambda: "step 2" in logs(stack, submitted["id"]), 90, "the job to make progress")
    response = stack.api.post(f"/api/v1/jobs/{submitted['id']}/cancel/")
    assert response.status_code == 200, response.text
    done = wait_state(stack, submitted["id"], TERMINAL, timeout=30)
    assert done["state"] == "CANCELLED"
    assert "stop requested" in logs(stack, submitted["id"])
    wait_for(lambda: not running_scripts("trainer.py"), 10, "the processes to go")


def test_a_high_priority_job_preempts_a_low_one_which_resumes_later(stack):
    low = submit(
        stack,
        name="low",
        priority="low",
        entrypoint=["python", "trainer.py"],
        env={"STEPS": "15", "STEP_SECONDS": "0.3"},
        resources={"nodes": 2},  # one slot on each host, rendezvous over loopback
    )
    wait_for(lambda: "step 3" in logs(stack, low["id"]), 90, "the low job to make progress")
    high = submit(
        stack,
        name="high",
        priority="high",
        entrypoint=["python", "hello.py"],
        resources={"procs_per_node": 2},  # needs a whole host
    )
    assert wait_state(stack, high["id"], TERMINAL)["state"] == "SUCCEEDED"
    done = wait_state(stack, low["id"], TERMINAL, timeout=120)
    output = logs(stack, low["id"])
    assert done["state"] == "SUCCEEDED", output
    assert (done["preemptions"], done["restarts"]) == (1, 0)
    runs = attempts(stack, low["id"])
    assert [a["state"] for a in runs] == ["PREEMPTED", "SUCCEEDED"]
    assert len(runs[0]["nodes"]) == 2
    first_steps = [p[1] for p in metric(stack, low["id"], "first_step")]
    assert first_steps[0] == 1 and first_steps[1] > 1
    checkpointed = int(Path(runs[1]["resume_from"]).name.split("-")[1])
    assert first_steps[1] == checkpointed + 1


def test_a_worker_shutting_down_hands_its_job_back_to_resume_elsewhere(stack):
    submitted = submit(
        stack,
        name="drained",
        entrypoint=["python", "trainer.py"],
        env={"STEPS": "14", "STEP_SECONDS": "0.3"},
    )
    wait_for(lambda: "step 3" in logs(stack, submitted["id"]), 90, "the job to make progress")
    host = attempts(stack, submitted["id"])[-1]["nodes"][0]["worker"]
    proc = stack.workers[host]
    proc.terminate()  # SIGTERM: Celery's warm shutdown, as a deploy or Ctrl-C does
    assert proc.wait(timeout=30) == 0
    done = wait_state(stack, submitted["id"], TERMINAL, timeout=120)
    runs = attempts(stack, submitted["id"])
    assert done["state"] == "SUCCEEDED", (runs, stack.worker_log(host)[-3000:])
    assert (done["preemptions"], done["restarts"]) == (1, 0)
    assert [a["state"] for a in runs] == ["PREEMPTED", "SUCCEEDED"]
    assert runs[0]["stop_requested"] == "drain" and runs[1]["nodes"][0]["worker"] != host
    assert "stop requested" in logs(stack, submitted["id"])  # it checkpointed on SIGTERM
    stack.start_worker(host)
    wait_for(lambda: host in online(stack), 60, "the worker to come back")


def test_a_killed_worker_loses_its_attempt_and_the_job_resumes_elsewhere(stack):
    submitted = submit(
        stack,
        name="survivor",
        entrypoint=["python", "trainer.py"],
        env={"STEPS": "16", "STEP_SECONDS": "0.3"},
        max_restarts=2,
    )

    victim = wait_for(lambda: holder(stack, submitted["id"]), 90, "the job to checkpoint")
    stack.kill_worker(victim)
    # The guard kills the job's processes when their worker dies.
    wait_for(lambda: not running_scripts("trainer.py"), 10, "the orphaned processes to die")
    most_running = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        current = job(stack, submitted["id"])
        runs = attempts(stack, submitted["id"])
        most_running = max(most_running, sum(a["state"] == "RUNNING" for a in runs))
        if current["state"] in TERMINAL:
            break
        time.sleep(0.2)
    assert most_running == 1
    assert current["state"] == "SUCCEEDED", logs(stack, submitted["id"])
    runs = attempts(stack, submitted["id"])
    assert [a["state"] for a in runs] == ["LOST", "SUCCEEDED"]
    assert "lease" in runs[0]["reason"]
    assert runs[1]["nodes"][0]["worker"] != victim
    checkpointed = int(Path(runs[1]["resume_from"]).name.split("-")[1])
    first_steps = [p[1] for p in metric(stack, submitted["id"], "first_step")]
    assert first_steps == [1.0, checkpointed + 1.0]
    assert current["restarts"] == 1
    stack.start_worker(victim)  # put the host back for whatever runs next


def test_a_frozen_worker_stops_its_job_itself_before_it_runs_elsewhere(stack):
    """SIGSTOP a worker past its job's lease: the guard stops the job before the lease can
    expire (self-fencing), the job resumes on the other host, and never do two attempts'
    processes run at once; what the frozen worker says when it wakes is refused."""
    submitted = submit(
        stack,
        name="frozen",
        entrypoint=["python", "trainer.py"],
        env={"STEPS": "40", "STEP_SECONDS": "0.3"},
        max_restarts=2,
    )

    victim = wait_for(lambda: holder(stack, submitted["id"]), 90, "the job to checkpoint")
    stack.freeze_worker(victim)
    frozen_at = time.monotonic()
    most, gone_after, resumed = 0, None, None
    try:
        next_api = 0.0
        while time.monotonic() - frozen_at < 60 and resumed is None:
            live = running_scripts("trainer.py")  # every 100 ms: never two at once
            most = max(most, len(live))
            if not live and gone_after is None:
                gone_after = time.monotonic() - frozen_at
            if time.monotonic() >= next_api:
                next_api = time.monotonic() + 0.5
                runs = attempts(stack, submitted["id"])
                if len(runs) > 1 and runs[-1]["state"] == "RUNNING":
                    resumed = runs[-1]
            time.sleep(0.1)
        assert resumed is not None, stack.worker_log(victim)[-3000:]
        assert resumed["nodes"][0]["worker"] != victim
        time.sleep(1)  # the new attempt runs while the old worker is still frozen
        most = max(most, len(running_scripts("trainer.py")))
    finally:
        stack.thaw_worker(victim)
    # Lease 4 s: the guard stopped the job at 2 s (SIGTERM) or 3 s (SIGKILL) without it.
    assert gone_after is not None and gone_after < 4.0, gone_after
    print(f"frozen worker: workload gone {gone_after:.2f} s after the freeze (lease 4 s)")
    current = wait_state(stack, submitted["id"], TERMINAL, timeout=120)
    assert most == 1
    assert current["state"] == "SUCCEEDED", logs(stack, submitted["id"])
    runs = attempts(stack, submitted["id"])
    assert [a["state"] for a in runs] == ["LOST", "SUCCEEDED"], runs
    assert "lease" in runs[0]["reason"]
    # What the first attempt printed after the freeze (its guard's notice, its SIGTERM
    # checkpoint) reached its frozen worker only after the fence: none of it was stored.
    chunks, since = [], 0
    while page := stack.api.get(
        f"/api/v1/jobs/{submitted['id']}/logs/", params={"since": since}
    ).json()["chunks"]:
        chunks += page
        since = page[-1]["id"]
    stale = "".join(c["text"] for c in chunks if c["attempt"] == 1)
    assert "step 3" in stale and "[guard]" not in stale and "stop requested" not in stale
    checkpointed = int(Path(runs[1]["resume_from"]).name.split("-")[1])
    assert [p[1] for p in metric(stack, submitted["id"], "first_step")] == [
        1.0,
        checkpointed + 1.0,
    ]
    wait_for(lambda: victim in online(stack), 30, "the thawed worker to heartbeat again")
