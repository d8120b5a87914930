"""The workload runtime end to end (issue 10): jobs run sandboxed as their project's uid,
see nothing of the control plane, listen only inside their own network namespace, and
get the Python environment their spec asks for (built with uv, cached, shared)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import psutil
import pytest

from tests.e2e.stack import ROOT
from tests.e2e.test_jobs import (
    TERMINAL,
    attempts,
    jobs_stack,
    logs,
    metric,
    running_scripts,
    submit,
    wait_for,
    wait_state,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack():
    yield from jobs_stack()


PROBES = {
    "secret_key",
    "redis_password",
    "database",
    "proc_environ",
    "other_project_file",
    "storage_listing",
    "redis_port",
    "web_port",
    "checkout_settings",
    "write_checkout",
    "write_var",
    "write_etc",
    "root_uid",
}


def test_a_job_cannot_reach_the_control_planes_secrets_storage_or_services(stack):
    storage = stack.var_dir / "storage"
    foreign = storage / "jobs" / "999999" / "checkpoints" / "other-project.txt"
    foreign.parent.mkdir(parents=True)
    foreign.write_text("another project's data")
    redis_port = urlparse(stack.redis_url).port
    submitted = submit(
        stack,
        name="attack",
        entrypoint=["python", "attack.py"],
        args=[str(stack.var_dir), str(storage), str(foreign), str(redis_port),
              str(stack.http_port), str(ROOT)],
    )  # fmt: skip
    done = wait_state(stack, submitted["id"], TERMINAL)
    output = logs(stack, submitted["id"])
    assert done["state"] == "SUCCEEDED", output
    results = {}
    for line in output.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            results[record["probe"]] = record
    assert set(results) == PROBES | {"done"}, output
    leaks = {name: r["outcome"] for name, r in results.items() if name != "done"}
    assert {k: v for k, v in leaks.items() if v != "blocked"} == {}
    # It ran as an unprivileged uid and saw only its own few processes.
    assert results["done"]["uid"] >= 1000 and results["done"]["pids"] < 10
    # Nothing it tried to write exists outside.
    assert not (ROOT / "owned.txt").exists() and not (stack.var_dir / "owned.txt").exists()
    assert not Path("/etc/owned.txt").exists()
    # The sandbox it ran in is on record.
    [attempt] = attempts(stack, submitted["id"])
    assert attempt["environment"]["sandbox"] == "bwrap"
    assert attempt["environment"]["kind"] == "worker"


def _listening_ports(pid: int) -> set[int]:
    """Listening TCP ports in the network namespace of ``pid`` (its /proc/<pid>/net)."""
    ports = set()
    for name in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{name}") as table:
            for row in table.readlines()[1:]:
                fields = row.split()
                if fields[3] == "0A":  # LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_a_single_node_jobs_sockets_listen_only_in_its_own_network_namespace(stack):
    submitted = submit(
        stack,
        name="listeners",
        entrypoint=["python", "listen_hold.py"],
        resources={"procs_per_node": 2},
    )
    wait_for(lambda: logs(stack, submitted["id"]).count("listening") == 2, 60, "ranks up")
    ranks = wait_for(lambda: running_scripts("listen_hold.py"), 10, "rank processes")
    inside = set().union(*(_listening_ports(p.pid) for p in ranks))
    assert inside, "the job's store and gloo should listen somewhere"
    host = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert not inside & host, f"job ports {sorted(inside & host)} are open on the host"
    # Cancelling reaches the ranks through the sandbox (SIGTERM via the guard), and they go.
    response = stack.api.post(f"/api/v1/jobs/{submitted['id']}/cancel/")
    assert response.status_code == 200, response.text
    done = wait_state(stack, submitted["id"], TERMINAL, timeout=30)
    assert done["state"] == "CANCELLED"
    assert "rank 0 stopping" in logs(stack, submitted["id"])
    wait_for(lambda: not running_scripts("listen_hold.py"), 10, "ranks gone")


def test_an_environment_is_built_with_uv_cached_and_shared(stack):
    first = submit(
        stack,
        name="env-1",
        entrypoint=["python", "uses_env.py"],
        environment={"pip": ["tomli-w==1.2.0"]},
    )
    done = wait_state(stack, first["id"], TERMINAL, timeout=240)
    output = logs(stack, first["id"])
    assert done["state"] == "SUCCEEDED", output
    assert "tomli_w ok = true torch" in output
    assert "[environment] building" in output
    [built] = attempts(stack, first["id"])
    env = built["environment"]
    assert env["kind"] == "venv" and env["cached"] is False
    assert env["packages"] == ["tomli-w==1.2.0"]  # only what the base lacks
    # The second job asks for the same set: the same environment, from the host's cache.
    second = submit(
        stack,
        name="env-2",
        entrypoint=["python", "uses_env.py"],
        environment={"pip": ["tomli-w==1.2.0"]},
    )
    done = wait_state(stack, second["id"], TERMINAL, timeout=120)
    assert done["state"] == "SUCCEEDED", logs(stack, second["id"])
    [reused] = attempts(stack, second["id"])
    assert reused["environment"]["key"] == env["key"] and reused["environment"]["cached"]
    assert f"reusing {env['key']}" in logs(stack, second["id"])
    cache = [p for p in (stack.var_dir / "envs").iterdir() if (p / "cp-env.json").exists()]
    assert [p.name for p in cache] == [env["key"]]
    # cpctl shows what each attempt ran in.
    shown = subprocess.run(
        [sys.executable, "-m", "cpctl", "attempts", str(second["id"])],
        cwd=ROOT,
        env={"CP_URL": stack.url, "CP_TOKEN": stack.token, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"venv {env['key']} cached: tomli-w==1.2.0" in shown.stdout, shown.stdout
    assert "bwrap" in shown.stdout


def test_a_bad_requirement_fails_the_job_with_the_resolvers_message_and_no_restarts(stack):
    submitted = submit(
        stack,
        name="bad-env",
        entrypoint=["python", "uses_env.py"],
        environment={"pip": ["cp-no-such-package-for-tests==1.0"]},
        max_restarts=3,
    )
    started = time.monotonic()
    done = wait_state(stack, submitted["id"], TERMINAL, timeout=120)
    assert done["state"] == "FAILED"
    assert done["restarts"] == 0 and len(attempts(stack, submitted["id"])) == 1
    assert done["reason"].startswith("Its environment could not be built")
    output = logs(stack, submitted["id"])
    assert "cp-no-such-package-for-tests" in output
    assert "resolving the requirements failed" in output
    assert time.monotonic() - started < 120


def test_a_spec_with_a_bad_environment_is_refused_with_a_message(stack):
    cases = [
        ({"pip": ["-e git+https://example.invalid/x"]}, "pip options"),
        ({"pip": ["pkg @ https://example.invalid/x.whl"]}, "URL"),
        ({"requirements": "../etc/passwd"}, "relative path"),
        ({"requirements": "missing-requirements.txt"}, "file of the uploaded code"),
        ({"python": "2.7"}, "3.11"),
        ({"image": "busybox", "pip": ["x"]}, "into the image"),
        ({"surprise": 1}, "surprise"),
    ]
    for environment, message in cases:
        response = stack.api.post(
            "/api/v1/jobs/",
            json={"name": "bad", "entrypoint": ["python", "x.py"], "environment": environment},
        )
        assert response.status_code == 400, (environment, response.text)
        assert message in response.text, (environment, response.text)


def test_the_stacks_processes_do_not_carry_the_admin_password(stack):
    processes = [psutil.Process(stack.proc.pid), *stack.processes()]
    assert len(processes) >= 4  # the stack, web, worker, beat (and the embedded Redis)
    for proc in processes:
        try:
            environ = proc.environ()
        except psutil.Error:
            continue
        assert "CP_ADMIN_PASSWORD" not in environ, proc.cmdline()
    mode = (stack.var_dir).stat().st_mode & 0o777
    assert mode == 0o700 and (stack.var_dir / "secret_key").stat().st_mode & 0o077 == 0


def _container_hosts(stack) -> list[str]:
    workers = stack.api.get("/api/v1/workers/").json()["results"]
    assert all(w["sandbox"] == "bwrap" for w in workers), workers
    return [w["container_runtime"] for w in workers if w["container_runtime"]]


def test_an_image_job_is_refused_where_no_host_runs_containers(stack):
    if runtimes := _container_hosts(stack):
        pytest.skip(f"hosts here run containers ({runtimes}): the image test runs instead")
    response = stack.api.post(
        "/api/v1/jobs/",
        json={"name": "img", "entrypoint": ["python", "x.py"], "environment": {"image": "x:1"}},
    )
    assert response.status_code == 400
    assert "needs a worker host with a container runtime" in response.text


def test_an_image_job_runs_in_its_image(stack, tmp_path):
    if not _container_hosts(stack):
        pytest.skip("no host here can start a container (podman or docker; see the inventory)")
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox (Debian's busybox-static) is needed to make a local image")
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy(busybox, root / "bin" / "busybox")
    (root / "bin" / "sh").symlink_to("busybox")
    runtime = shutil.which("podman") or shutil.which("docker")
    tar = tmp_path / "rootfs.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(tar), "."], check=True)
    subprocess.run([runtime, "import", str(tar), "localhost/cp-test-busybox:1"], check=True)
    submitted = submit(
        stack,
        name="image",
        entrypoint=["sh", "-c", "echo hello from the image; /bin/busybox id -u"],
        environment={"image": "localhost/cp-test-busybox:1"},
    )
    done = wait_state(stack, submitted["id"], TERMINAL, timeout=120)
    output = logs(stack, submitted["id"])
    assert done["state"] == "SUCCEEDED", output
    assert "hello from the image" in output
    [attempt] = attempts(stack, submitted["id"])
    assert attempt["environment"]["kind"] == "image"


def test_an_unmodified_hugging_face_trainer_script_runs_as_a_two_process_job(stack):
    submitted = submit(
        stack,
        name="hf-trainer",
        entrypoint=["python", "hf_trainer.py"],
        args=["--max-steps", "4", "--output-dir", "outputs", "--report-to", "tensorboard"],
        resources={"procs_per_node": 2},
        environment={"pip": ["datasets", "accelerate"]},
    )
    done = wait_state(stack, submitted["id"], TERMINAL, timeout=480)
    output = logs(stack, submitted["id"])
    assert done["state"] == "SUCCEEDED", output
    for rank in (0, 1):
        assert f"rank {rank} of 2: trained 4 steps" in output, output
    # Issue 14: its TensorBoard scalars became the job's metrics, its tqdm bar its progress
    # (and one line in the log), its output directory the job's outputs.
    loss = metric(stack, submitted["id"], "train/loss")
    assert [p[0] for p in loss] == [1, 2, 3, 4], loss
    assert done["progress"]["step"] == 4 and done["progress"]["total"] == 4, (
        done["progress"],
        output.replace("\r", "<CR>\n"),
    )
    bars = [line for line in output.replace("\r", "\n").splitlines() if "it/s]" in line]
    assert 1 <= len(bars) <= 8, bars  # not one per redraw
    kept = stack.api.get(f"/api/v1/jobs/{submitted['id']}/outputs/").json()["files"]
    paths = [f["path"] for f in kept]
    assert any(p.startswith("tensorboard/") and "tfevents" in p for p in paths), paths
    assert any(p.startswith("outputs/") for p in paths), paths
    [attempt] = attempts(stack, submitted["id"])
    names = {p.split("==")[0].lower() for p in attempt["environment"]["packages"]}
    assert {"datasets", "accelerate"} <= names
    assert not names & {"torch", "transformers", "numpy"}  # those come from the worker's


def test_a_project_secret_reaches_the_jobs_environment_and_nowhere_else(stack):
    value = "hf_e2e_" + "s3cr3t" * 6
    project = stack.api.get("/api/v1/projects/").json()["results"][0]
    created = stack.api.post(
        f"/api/v1/projects/{project['id']}/secrets/", json={"name": "hf", "value": value}
    )
    assert created.status_code == 201, created.text
    submitted = submit(
        stack,
        name="secret-user",
        entrypoint=["python", "uses_secret.py"],
        env={"HF_TOKEN": {"secret": "hf"}},
    )
    done = wait_state(stack, submitted["id"], TERMINAL)
    output = logs(stack, submitted["id"])
    assert done["state"] == "SUCCEEDED", output
    assert f"secret digest {hashlib.sha256(value.encode()).hexdigest()}" in output
    seen = [
        output,
        stack.api.get(f"/api/v1/jobs/{submitted['id']}/").text,
        stack.api.get(f"/api/v1/jobs/{submitted['id']}/attempts/").text,
        stack.api.get(f"/api/v1/projects/{project['id']}/secrets/").text,
        stack.log(),
    ]
    assert not [text for text in seen if value in text]
