"""``POST /api/v1/batch-jobs/`` on the database side: prompts uploaded, or read from a
file the control plane already holds (a job's kept outputs, a registered model version's
files), and what is refused with a 400 that says what to fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs import storage
from jobs.models import Job
from tests.conftest import add_host

pytestmark = pytest.mark.django_db
URL = "/api/v1/batch-jobs/"
ROWS = [{"prompt": "Once upon a time"}, {"prompt": "The cat", "id": "b"}]
JSONL = "".join(json.dumps(r) + "\n" for r in ROWS).encode()


def post(client, spec: dict, upload: bytes | None = None):
    data = {"spec": json.dumps({"project": "alpha", "model": "tiny", **spec})}
    if upload is not None:
        from django.core.files.uploadedfile import SimpleUploadedFile

        data["input"] = SimpleUploadedFile("p.jsonl", upload, "application/jsonl")
    return client.post(URL, data, format="multipart")


def stored_input(job: Job) -> bytes:
    return Path(job.args[job.args.index("--input") + 1]).read_bytes()


@pytest.fixture
def kept(cast, submit) -> Job:
    """A job of alpha's that kept ``outputs/prompts.jsonl`` (on a host with 4 CPU slots)."""
    add_host("cpu-1", cpu_slots=4)
    job = submit(name="make-prompts")
    root = storage.output_root(job.pk) / "outputs"
    root.mkdir(parents=True, exist_ok=True)  # ids restart per test; the storage stays
    (root / "prompts.jsonl").write_bytes(JSONL)
    return job


def test_prompts_come_from_an_upload_a_jobs_outputs_or_a_model_version(cast, api, version, kept):
    uploaded = post(api(cast.bob), {}, JSONL)
    assert uploaded.status_code == 201, uploaded.json()
    kept_file = {"job": kept.pk, "path": "outputs/prompts.jsonl"}
    from_job = post(api(cast.bob), {"input_from": kept_file})
    assert from_job.status_code == 201, from_job.json()
    (Path(version.path) / "eval.jsonl").write_bytes(JSONL)
    from_model = post(api(cast.bob), {"input_from": {"model": "tiny", "path": "eval.jsonl"}})
    assert from_model.status_code == 201, from_model.json()
    for response in (uploaded, from_job, from_model):
        body = response.json()
        assert body["rows"] == 2 and body["rows_written"] == 0
        job = Job.objects.get(pk=body["id"])
        assert [json.loads(line) for line in stored_input(job).splitlines()] == ROWS


@pytest.mark.parametrize(
    ("spec", "upload", "says"),
    [
        ({}, None, "Attach the prompts"),
        ({"input_from": {"job": 1, "path": "outputs/prompts.jsonl"}}, JSONL, "not both"),
        ({"input_from": {"path": "x.jsonl"}}, None, "Name one of job"),
        ({"input_from": {"job": 1, "model": "tiny", "path": "x"}}, None, "Name one of job"),
        ({"input_from": {"job": 1, "version": 1, "path": "x"}}, None, "Only with model"),
        ({"input_from": {"job": "KEPT", "path": "../../etc/passwd"}}, None, "not a path inside"),
        ({"input_from": {"job": "KEPT", "path": "outputs/none.jsonl"}}, None, "kept no output"),
        ({"input_from": {"job": 999999, "path": "a.jsonl"}}, None, "has no job 999999"),
        ({"input_from": {"model": "tiny", "path": "missing.jsonl"}}, None, "has no file"),
        ({"input_from": {"model": "nope", "path": "a.jsonl"}}, None, "no model named"),
        ({"input_from": {"model": "tiny", "path": "config.json"}}, None, "give one of prompt"),
        ({"input_from": {"job": "KEPT", "path": "outputs/prompts.jsonl", "x": 1}}, None, "Unknown"),
    ],
)
def test_bad_sources_are_a_400_that_says_what_to_fix(cast, api, version, kept, spec, upload, says):
    source = spec.get("input_from") or {}
    if source.get("job") == "KEPT":
        source["job"] = kept.pk
    before = Job.objects.count()
    response = post(api(cast.bob), spec, upload)
    assert response.status_code in (400, 404), response.content
    assert says in json.dumps(response.json()), response.json()
    assert Job.objects.count() == before


def test_another_projects_job_outputs_are_not_a_source(cast, api, version, kept):
    (Path(version.path) / "eval.jsonl").write_bytes(JSONL)
    from serving.models import Model, ModelVersion

    theirs = Model.objects.create(project=cast.beta, name="tiny")
    ModelVersion.objects.create(model=theirs, version=1, source="upload", path=version.path)
    response = post(
        api(cast.dave),
        {"project": "beta", "input_from": {"job": kept.pk, "path": "outputs/prompts.jsonl"}},
    )
    assert response.status_code == 400
    assert f"has no job {kept.pk}" in response.json()["input_from"][0]
