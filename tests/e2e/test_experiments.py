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


def sweep(stack, sweep_id: int) -> dict:
    return stack.api.get(f"/api/v1/sweeps/{sweep_id}/").json()


def wait_sweep(stack, sweep_id: int, timeout: float) -> dict:
    return wait_for(
        lambda: (s := sweep(stack, sweep_id))["state"] != "RUNNING" and s,
        timeout, f"sweep {sweep_id} to end",
    )  # fmt: skip


def test_a_grid_sweep_of_the_built_in_recipe_runs_each_point_as_a_job(stack):
    response = stack.api.post("/api/v1/sweeps/", json={
        "name": "tiny-lr", "project": "default", "method": "grid",
        "job": {"entrypoint": ["python", "-m", "workers.recipes.causal_lm"],
                "args": ["--preset", "tiny", "--max-steps", "6", "--seq-len", "64",
                         "--micro-batch", "2", "--log-every", "2", "--eval-every", "3",
                         "--eval-batches", "2", "--checkpoint-every", "0", "--no-register"],
                "max_restarts": 0},
        "parameters": {"lr": [0.0003, 0.003]},
        "metric": "eval/eval_loss", "goal": "minimize", "max_concurrent": 2,
    })  # fmt: skip
    assert response.status_code == 201, response.text
    created = response.json()
    done = wait_sweep(stack, created["id"], 240)
    trials = stack.api.get(f"/api/v1/sweeps/{created['id']}/trials/?ordering=metric").json()
    assert done["state"] == "SUCCEEDED", (done, trials, [logs(stack, t["job"]) for t in trials])
    assert sorted(t["hparams"]["lr"] for t in trials) == [0.0003, 0.003]
    assert all(t["state"] == "SUCCEEDED" and t["metric_step"] == 6 for t in trials)
    for trial in trials:  # each an ordinary job of the project, its lr on the command line
        ran = job(stack, trial["job"])
        assert ran["args"][-2:] == ["--lr", str(trial["hparams"]["lr"])]
        assert ran["tags"] == [f"sweep-{created['id']}"] and ran["state"] == "SUCCEEDED"
    assert trials[0]["metric"] < trials[1]["metric"]
    assert done["best"]["number"] == trials[0]["number"]
    assert done["best"]["metric"] == trials[0]["metric"]


def test_asha_stops_the_trials_with_bad_learning_rates_at_the_first_rung(stack, tmp_path):
    (tmp_path / "sweep.yaml").write_text(
        "name: quadratic-asha\nproject: default\n"
        "job:\n  entrypoint: [python, quadratic.py]\n  max_restarts: 0\n"
        "method: grid\nparameters:\n  lr: [0.1, 0.3, 1.2, 1.5]\n"
        "metric: loss\ngoal: minimize\nmax_concurrent: 1\n"
        "early_stopping: {type: asha, min_steps: 2, max_steps: 12, reduction_factor: 3}\n"
    )
    submitted = cpctl(stack, "sweep", "submit", str(tmp_path / "sweep.yaml"), "--dir",
                      str(ROOT / "tests" / "e2e" / "job_scripts"), "--watch")  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    sweep_id = int(submitted.stdout.split()[2])
    assert "SUCCEEDED, 4 trial(s): 2 succeeded, 2 stopped" in submitted.stdout
    trials = {t["hparams"]["lr"]: t for t in
              stack.api.get(f"/api/v1/sweeps/{sweep_id}/trials/").json()}  # fmt: skip
    assert {lr: t["state"] for lr, t in trials.items()} == {
        0.1: "SUCCEEDED",
        0.3: "SUCCEEDED",
        1.2: "STOPPED",
        1.5: "STOPPED",
    }
    for lr in (1.2, 1.5):
        stopped = trials[lr]
        assert stopped["rungs"] == {"0": pytest.approx(9 * (1 - 2 * lr) ** 4)}
        assert stopped["reason"].startswith("Stopped early by ASHA at rung 1 (step 2)")
        ran = job(stack, stopped["job"])
        assert ran["state"] == "CANCELLED" and ran["progress"]["step"] < 12, ran
    assert trials[0.3]["rungs"].keys() == {"0", "1"} and trials[0.3]["metric_step"] == 12
    shown = cpctl(stack, "sweep", "show", str(sweep_id), "--sort", "metric")
    assert shown.returncode == 0 and "best: trial 1" in shown.stdout
    rows = [line.split() for line in shown.stdout.splitlines() if line[:1].isdigit()]
    assert [r[0] for r in rows][:2] == ["1", "0"]  # best first
    listed = cpctl(stack, "sweep", "list")
    assert listed.returncode == 0 and "quadratic-asha" in listed.stdout
    again = cpctl(stack, "sweep", "cancel", str(sweep_id))
    assert again.returncode == 1 and "SUCCEEDED already" in again.stderr
