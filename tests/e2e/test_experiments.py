"""Experiments with users' own code end to end (issue 14): the spec's ``${CP_*}``
references, outputs kept after the job and served by the API."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile

import pytest

from tests.e2e.stack import ROOT
from tests.e2e.test_jobs import TERMINAL, job, jobs_stack, logs, submit, wait_for, wait_state

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack():
    yield from jobs_stack()


def cpctl(stack, *args: str) -> subprocess.CompletedProcess:
    env = {"CP_URL": stack.url, "CP_TOKEN": stack.token, "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "cpctl", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_a_jobs_outputs_are_kept_listed_and_downloadable(stack, tmp_path):
    submitted = submit(
        stack,
        name="outputs",
        entrypoint=["python", "writes_outputs.py"],
        args=["--output_dir", "outputs", "--cache_dir", "${CP_WORK_DIR}/cache"],
        env={"RESULTS_FILE": "${CP_OUTPUT_DIR}/results.json"},
    )
    job_id = submitted["id"]
    done = wait_state(stack, job_id, TERMINAL)
    output = logs(stack, job_id)
    assert done["state"] == "SUCCEEDED", output
    # ${CP_WORK_DIR} became the node's own working directory (an absolute path).
    cache = output.split("cache_dir=")[1].split()[0]
    assert cache.startswith("/") and cache.endswith(f"jobs/{job_id}/attempts/1/node0/cache")
    assert "hostname-link: a symbolic link, not followed" in output

    listed = stack.api.get(f"/api/v1/jobs/{job_id}/outputs/").json()
    paths = {f["path"]: f["size"] for f in listed["files"]}
    assert paths == {"outputs/model.txt": 7, "outputs/sub/notes.txt": 1000, "results.json": 17}
    assert listed["total_bytes"] == 1024 and job(stack, job_id)["outputs_bytes"] == 1024

    one = stack.api.get(f"/api/v1/jobs/{job_id}/outputs/file/", params={"path": "results.json"})
    assert one.status_code == 200 and one.json() == {"accuracy": 0.5}
    assert 'filename="results.json"' in one.headers["content-disposition"]
    archive = stack.api.get(f"/api/v1/jobs/{job_id}/outputs/archive/")
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert set(members) == set(paths) and members["outputs/model.txt"] == b"weights"
    link = stack.api.get(
        f"/api/v1/jobs/{job_id}/outputs/file/", params={"path": "outputs/hostname-link"}
    )
    assert link.status_code == 404

    listing = cpctl(stack, "outputs", str(job_id))
    assert listing.returncode == 0 and "outputs/sub/notes.txt" in listing.stdout
    assert "3 file(s), 1024 bytes" in listing.stdout
    got = cpctl(stack, "outputs", str(job_id), "--get", "outputs/model.txt", "-o",
                str(tmp_path / "m.txt"))  # fmt: skip
    assert got.returncode == 0 and (tmp_path / "m.txt").read_text() == "weights"
    everything = cpctl(stack, "outputs", str(job_id), "--all", "-o", str(tmp_path / "all.tgz"))
    assert everything.returncode == 0 and tarfile.is_tarfile(tmp_path / "all.tgz")
    missing = cpctl(stack, "outputs", str(job_id), "--get", "nope.txt", "-o", str(tmp_path / "n"))
    assert missing.returncode == 1 and "no output file" in missing.stderr
    assert not (tmp_path / "n").exists() and not list(tmp_path.glob(".n*"))


def test_an_unknown_reference_is_refused_at_submit(stack):
    response = stack.api.post(
        "/api/v1/jobs/",
        json={"name": "typo", "entrypoint": ["python", "x.py"], "env": {"A": "${CP_OUTPUTDIR}"}},
    )
    assert response.status_code == 400
    assert "${CP_OUTPUTDIR} is not expanded" in response.json()["env"][0]


def test_a_tqdm_bar_is_one_line_in_the_log_and_the_jobs_progress(stack):
    submitted = submit(stack, name="bar", entrypoint=["python", "tqdm_loop.py"], args=["40"])
    job_id = submitted["id"]
    seen = []

    def midway():
        current = job(stack, job_id)
        step = (current.get("progress") or {}).get("step")
        if step is not None:
            seen.append(step)
        return current if current["state"] in TERMINAL else None

    done = wait_for(midway, 90, "the bar's job to end", interval=0.2)
    output = logs(stack, job_id)
    assert done["state"] == "SUCCEEDED", output
    assert done["progress"]["step"] == 40 and done["progress"]["total"] == 40
    assert done["progress"]["source"] == "progress bar"
    assert any(0 < s < 40 for s in seen), seen  # it moved while the job ran
    # 40 redraws at 20 a second were stored as a few \r lines (at most one a second),
    # then the finished bar as a line of its own.
    redraws = output.count("\r")
    assert 1 <= redraws <= 8, repr(output)
    lines = output.split("\n")
    assert lines[0] == "starting" and "40/40" in lines[1] and lines[2] == "finished", lines


def test_a_webhook_hears_the_job_end_through_the_celery_worker_after_two_failures(stack):
    from tests.notifications.test_webhooks import Receiver

    receiver = Receiver(failures=2)
    try:
        project = stack.api.get("/api/v1/projects/", params={"name": "default"}).json()
        [default] = [p for p in project["results"] if p["name"] == "default"]
        made = stack.api.post(
            f"/api/v1/projects/{default['id']}/webhooks/",
            json={"name": "e2e", "url": receiver.url, "events": ["job.succeeded"]},
        )
        assert made.status_code == 201, made.text
        submitted = submit(stack, name="heard", entrypoint=["python", "hello.py"])
        assert wait_state(stack, submitted["id"], TERMINAL)["state"] == "SUCCEEDED"
        wait_for(lambda: len(receiver.got) >= 3, 30, "three tries of the delivery")
        log = f"/api/v1/projects/{default['id']}/webhooks/{made.json()['id']}/deliveries/"
        [delivery] = wait_for(
            lambda: [d for d in stack.api.get(log).json() if d["state"] == "DELIVERED"],
            10, "the delivery to be logged",
        )  # fmt: skip
        assert delivery["attempts"] == 3 and delivery["payload"]["job"]["id"] == submitted["id"]
        headers, body = receiver.got[-1]
        assert headers["X-CP-Event"] == "job.succeeded" and b'"state":"SUCCEEDED"' in body
    finally:
        receiver.close()
