"""The API contract, against a live stack: schemathesis finds no answer the schema does not
foretell (every check, a bounded number of examples per operation), and a client generated
from the schema with openapi-python-client submits a job and reads back all that it made.

The schema is the same on either database, so only the embedded pass runs this module.
A longer run by hand: see "The API contract" in the README.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.stack import Stack
from tests.e2e.test_jobs import code_archive

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.environ.get("DATABASE_URL", "").startswith("postgres"),
        reason="the schema does not depend on the database: the embedded pass checks it",
    ),
]


@pytest.fixture(scope="module")
def live():
    stack = Stack(
        fake_gpus=0,
        extra_env={
            "CP_THROTTLE_USER": "1000000/min",
            "CP_THROTTLE_ANON": "1000000/min",
            "CP_WORKER_CPU_SLOTS": "2",
        },
    )
    stack.start()
    try:
        stack.wait_ready()
        minted = stack.manage("create_token", "admin", "--name", "contract")
        assert minted.returncode == 0, minted.stderr
        yield stack, minted.stdout.strip()
    finally:
        stack.close()


def schemathesis(url: str, token: str, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """The schemathesis CLI with this suite's config and hooks."""
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file", str(HERE / "schemathesis.toml"),
            "run", f"{url}/api/schema/",
            "-H", f"Authorization: Bearer {token}",
            "--checks", "all",
            # Revoking the run's own token would turn the rest of it into 401s.
            "--exclude-name", "DELETE /api/v1/tokens/{id}/",
            *args,
        ],
        cwd=workdir,  # its .schemathesis/ cache stays out of the repository
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.contract.hooks", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip


def test_schemathesis_finds_no_answer_the_schema_does_not_foretell(live, tmp_path):
    stack, token = live
    result = schemathesis(stack.url, token, tmp_path, "--max-examples", "5", "--seed", "7")
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "63/64" in result.stdout or "Selected:" in result.stdout  # it ran every operation


def generated_client(url: str, where: Path):
    """A package generated from the live schema, imported as ``cp_client``."""
    schema = where / "schema.json"
    schema.write_bytes(httpx.get(f"{url}/api/schema/?format=json", timeout=30).content)
    tools = str(Path(sys.executable).parent)
    made = subprocess.run(
        [f"{tools}/openapi-python-client", "generate", "--path", str(schema),
         "--output-path", str(where / "cp_client"), "--meta", "none",
         "--config", str(HERE / "client.yaml")],
        env={**os.environ, "PATH": f"{tools}:{os.environ.get('PATH', '')}"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout[-4000:] + made.stderr[-2000:]
    sys.path.insert(0, str(where))
    try:
        return importlib.import_module("cp_client")
    finally:
        sys.path.remove(str(where))


def test_a_client_generated_from_the_schema_submits_a_job_and_reads_what_it_made(live, tmp_path):
    stack, token = live
    cp = generated_client(stack.url, tmp_path)
    from cp_client.api.v1 import (
        v1_jobs_attempts_list,
        v1_jobs_checkpoints_list,
        v1_jobs_create,
        v1_jobs_list,
        v1_jobs_logs_retrieve,
        v1_jobs_metrics_retrieve,
        v1_jobs_retrieve,
        v1_models_create,
        v1_models_versions_list,
        v1_projects_list,
        v1_tokens_list,
        v1_workers_list,
    )  # fmt: skip
    from cp_client.models import V1JobsCreateFilesBody
    from cp_client.types import File

    client = cp.AuthenticatedClient(
        base_url=stack.url, token=token, raise_on_unexpected_status=True, timeout=60
    )
    # A project of its own: the fuzzing before it may have changed default's caps and quotas.
    made = httpx.post(f"{stack.url}/api/v1/projects/", json={"name": "generated-client"},
                      headers={"Authorization": f"Bearer {token}"}, timeout=30)  # fmt: skip
    assert made.status_code in (201, 409), made.text
    spec = (
        '{"name": "generated", "project": "generated-client", "max_restarts": 0,'
        ' "entrypoint": ["python", "steps.py", "--tag", "generated"],'
        ' "env": {"STEPS": "3", "STEP_SECONDS": "0.1"}}'
    )
    body = V1JobsCreateFilesBody(spec=spec, code=File(payload=code_archive(), file_name="code.tgz"))
    created = v1_jobs_create.sync(client=client, body=body)
    shown = getattr(created, "to_dict", lambda: created)()
    assert getattr(created, "name", None) == "generated", shown
    deadline = time.monotonic() + 120
    while (job := v1_jobs_retrieve.sync(created.id, client=client)).state not in (
        "SUCCEEDED", "FAILED", "CANCELLED"
    ):  # fmt: skip
        assert time.monotonic() < deadline, f"the job is still {job.state}"
        time.sleep(0.5)
    assert job.state == "SUCCEEDED", job.reason
    # The operations whose schema used to lie, each parsed by the generated models.
    logs = v1_jobs_logs_retrieve.sync(created.id, client=client)
    assert logs.finished and "step 3" in "".join(chunk.text for chunk in logs.chunks)
    checkpoints = v1_jobs_checkpoints_list.sync(created.id, client=client)
    steps = [c.step for c in checkpoints]
    assert steps and steps[0] == 3 and all(c.id for c in checkpoints), steps  # newest first
    attempts = v1_jobs_attempts_list.sync(created.id, client=client)
    assert [a.state for a in attempts] == ["SUCCEEDED"]
    metrics = v1_jobs_metrics_retrieve.sync(created.id, client=client)
    assert metrics is not None and isinstance(metrics.names, list)
    assert created.id in [j.id for j in v1_jobs_list.sync(client=client).results]
    model = v1_models_create.sync(
        client=client,
        body=cp.models.ModelRequest(name="generated-model", project="generated-client"),
    )
    assert v1_models_versions_list.sync(model.id, client=client) == []
    assert "generated-client" in [p.name for p in v1_projects_list.sync(client=client).results]
    assert "contract" in [t.name for t in v1_tokens_list.sync(client=client).results]
    assert v1_workers_list.sync(client=client).count >= 1
