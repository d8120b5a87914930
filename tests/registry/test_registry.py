"""The model registry: versions from checkpoints, jobs and uploads; only safetensors and
JSON/tokenizer files kept; project scoping; download; a succeeded job registers itself."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from controlplane.tenancy.services import Actor
from jobs import outputs, storage
from jobs.models import Job
from jobs.states import JobState
from serving import services
from serving.models import Model, ModelVersion
from tests.conftest import add_host

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def own_storage(settings, tmp_path):
    settings.STORAGE_DIR = tmp_path / "storage"


def hf_dir(path: Path, *, extra: dict[str, bytes] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4}))
    (path / "tokenizer.json").write_text("{}")
    save_file({"w": torch.zeros(3, 4), "b": torch.zeros(4)}, str(path / "model.safetensors"))
    for name, data in (extra or {}).items():
        (path / name).write_bytes(data)
    return path


@pytest.fixture
def job(cast, submit):
    add_host("cpu-1", cpu_slots=2)
    return submit(name="Tiny LM")


def tar_of(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in directory.iterdir():
            archive.add(path, arcname=path.name)
    return buffer.getvalue()


def test_a_checkpoint_becomes_a_version_without_its_training_state(cast, api, job):
    ckpt = hf_dir(
        storage.checkpoint_root(job.pk) / "step_00000010",
        extra={"optimizer.safetensors": b"x", "trainer_state.json": b"{}"},
    )
    checkpoint = outputs.record_checkpoint(job.pk, None, 10, str(ckpt), {"eval_loss": 2.5})
    bob = api(cast.bob)
    model = bob.post("/api/v1/models/", {"name": "tiny", "project": "alpha"}).json()
    created = bob.post(f"/api/v1/models/{model['id']}/versions/", {"checkpoint": checkpoint.pk})
    assert created.status_code == 201, created.json()
    body = created.json()
    assert (body["version"], body["source"], body["checkpoint_step"]) == (1, "checkpoint", 10)
    assert body["parameter_count"] == 16 and body["metrics"] == {"eval_loss": 2.5}
    kept = {p.name for p in Path(ModelVersion.objects.get().path).iterdir()}
    assert kept == {"config.json", "tokenizer.json", "model.safetensors"}


def test_an_hf_trainer_output_directory_registers_without_its_pickles(cast, api, job):
    out = hf_dir(
        storage.output_root(job.pk) / "outputs",
        extra={"training_args.bin": b"\x80\x04pickle", "rng_state.pth": b"\x80\x04",
               "generation_config.json": b"{}"},
    )  # fmt: skip
    (out / "runs").mkdir()
    (out / "link.safetensors").symlink_to(out / "model.safetensors")
    bob = api(cast.bob)
    model = bob.post("/api/v1/models/", {"name": "tiny", "project": "alpha"}).json()
    url = f"/api/v1/models/{model['id']}/versions/"
    created = bob.post(url, {"job": job.pk, "outputs": "outputs"}, format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["source"] == "outputs" and body["job"] == job.pk and body["parameter_count"] == 16
    kept = {p.name for p in Path(ModelVersion.objects.get().path).iterdir()}
    assert kept == {"config.json", "tokenizer.json", "model.safetensors", "generation_config.json"}
    notes = body["notes"].splitlines()
    assert "training_args.bin: a pickle: never loaded (weights must be .safetensors)" in notes
    assert any(n.startswith("rng_state.pth: a pickle") for n in notes)
    assert "runs: a subdirectory" in notes and "link.safetensors: a symbolic link" in notes
    for bad, field in (({"job": job.pk, "outputs": "../x"}, "outputs"),
                       ({"job": job.pk, "outputs": "nope"}, "outputs"),
                       ({"checkpoint": 1, "outputs": "outputs"}, "outputs")):  # fmt: skip
        refused = bob.post(url, bad, format="json")
        assert refused.status_code == 400 and field in json.dumps(refused.json()), refused.json()
    assert ModelVersion.objects.count() == 1
    other = api(cast.dave).post("/api/v1/models/", {"name": "mine", "project": "beta"}).json()
    stolen = api(cast.dave).post(
        f"/api/v1/models/{other['id']}/versions/", {"job": job.pk, "outputs": ""}, format="json"
    )
    assert stolen.status_code == 404  # another project's job
    # The job page offers it, and registers it in one click.
    from django.test import Client

    browser = Client()
    browser.force_login(cast.bob)
    assert 'data-outputs="outputs"' in browser.get(f"/jobs/{job.pk}/").content.decode()
    posted = browser.post(f"/jobs/{job.pk}/register/", {"outputs": "outputs", "model": "paged"})
    assert posted.status_code == 302
    assert Model.objects.get(name="paged").versions.get().source == "outputs"


def test_uploads_take_only_safetensors_and_json(cast, api, tmp_path):
    bob = api(cast.bob)
    model = bob.post("/api/v1/models/", {"name": "up", "project": "alpha"}).json()
    url = f"/api/v1/models/{model['id']}/versions/"
    good = bob.post(
        url, {"archive": io.BytesIO(tar_of(hf_dir(tmp_path / "ok")))}, format="multipart"
    )
    assert good.status_code == 201, good.json()
    for name in ("pytorch_model.bin", "evil.pkl", "modeling_custom.py"):
        bad = bob.post(
            url,
            {"archive": io.BytesIO(tar_of(hf_dir(tmp_path / name, extra={name: b"x"})))},
            format="multipart",
        )
        assert bad.status_code == 400, name
        assert "no pickles" in bad.json()["archive"][0] or "only" in bad.json()["archive"][0]
    no_config = tmp_path / "noconfig"
    no_config.mkdir()
    save_file({"w": torch.zeros(1)}, str(no_config / "model.safetensors"))
    refused = bob.post(url, {"archive": io.BytesIO(tar_of(no_config))}, format="multipart")
    assert refused.status_code == 400 and "config.json" in json.dumps(refused.json())
    assert ModelVersion.objects.count() == 1
    leftovers = list((storage.root() / "models").rglob("*.safetensors"))
    assert len(leftovers) == 1  # only the accepted version's weights


def test_a_version_downloads_as_a_tar_and_strangers_get_404(cast, api, tmp_path):
    model = services.create_model(Actor(user=cast.bob), cast.alpha, "dl")
    with open(tmp_path / "a.tgz", "wb") as handle:
        handle.write(tar_of(hf_dir(tmp_path / "src")))
    with open(tmp_path / "a.tgz", "rb") as handle:
        services.register_upload(Actor(user=cast.bob), model, handle, 1000)
    response = api(cast.carol).get(f"/api/v1/models/{model.pk}/versions/1/download/")
    assert response.status_code == 200
    data = b"".join(response.streaming_content)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        assert sorted(archive.getnames()) == [
            "dl-v1/config.json",
            "dl-v1/model.safetensors",
            "dl-v1/tokenizer.json",
        ]
    dave = api(cast.dave)
    assert dave.get(f"/api/v1/models/{model.pk}/").status_code == 404
    assert dave.get(f"/api/v1/models/{model.pk}/versions/1/download/").status_code == 404
    assert (
        api(cast.carol).post(f"/api/v1/models/{model.pk}/versions/", {"job": 1}).status_code == 403
    )  # viewers read, members register


def test_a_succeeded_job_registers_its_final_model(cast, job, django_capture_on_commit_callbacks):
    from jobs import lifecycle, scheduler

    final = hf_dir(storage.job_root(job.pk) / "attempts/1/node0/runs/final")
    scheduler.schedule()
    node = job.attempts.get().nodes.get()
    plan = lifecycle.claim_node(node.attempt_id, 0, node.worker_name)
    assert outputs.record_model(job.pk, str(final), {"eval_loss": 1.25})
    assert not outputs.record_model(job.pk, "/etc")  # only inside the job's storage
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.finish_node(plan.node_id, plan.claim, 0)
    assert Job.objects.get(pk=job.pk).state == JobState.SUCCEEDED
    version = ModelVersion.objects.get()
    assert (version.model.name, version.model.project, version.source) == (
        "tiny-lm",
        cast.alpha,
        "job",
    )
    assert version.metrics == {"eval_loss": 1.25} and version.job_id == job.pk
    assert Model.objects.count() == 1


def safetensors_bytes(header: object, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data


@pytest.mark.parametrize(
    ("weights", "says"),
    [
        (safetensors_bytes(["w"]), "not a JSON object"),
        (safetensors_bytes({"w": "F32"}), "not an object"),
        (
            safetensors_bytes({"w": {"dtype": "F32", "shape": "4", "data_offsets": [0, 16]}}),
            "shape",
        ),
        (
            safetensors_bytes({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 0]}}),
            "dimension",
        ),
        (
            safetensors_bytes({"w": {"dtype": "F32", "shape": [2**62], "data_offsets": [0, 8]}}),
            "dimension",
        ),
        (
            safetensors_bytes({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}),
            "outside the file",
        ),
        (
            safetensors_bytes(
                {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8
            ),
            "do not match",
        ),
        (safetensors_bytes({"w": {"dtype": "X9", "shape": [1], "data_offsets": [0, 4]}}), "dtype"),
        (b"\xff" * 8 + b"{}", "does not fit"),
        (b"\x02\0\0\0\0\0\0\0{x", "not JSON"),
    ],
)
def test_malformed_safetensors_headers_are_a_400_that_says_why(cast, api, tmp_path, weights, says):
    bob = api(cast.bob)
    model = bob.post("/api/v1/models/", {"name": "bad-weights", "project": "alpha"}).json()
    directory = hf_dir(tmp_path / "bad")
    (directory / "model.safetensors").write_bytes(weights)
    refused = bob.post(
        f"/api/v1/models/{model['id']}/versions/",
        {"archive": io.BytesIO(tar_of(directory))},
        format="multipart",
    )
    assert refused.status_code == 400, refused.content
    assert says in json.dumps(refused.json())
    assert ModelVersion.objects.count() == 0


def test_a_decompression_bomb_is_refused_from_its_headers_before_anything_is_written(
    cast, api, tmp_path, settings
):
    settings.UPLOAD_MAX_EXPANSION = 20.0
    directory = hf_dir(tmp_path / "bomb")
    (directory / "zeros.safetensors").write_bytes(b"\0" * (80 * 1024 * 1024))  # 80 MiB of zeros
    bomb = tar_of(directory)
    assert len(bomb) < 1024 * 1024  # it compresses to almost nothing
    bob = api(cast.bob)
    model = bob.post("/api/v1/models/", {"name": "bomb", "project": "alpha"}).json()
    url = f"/api/v1/models/{model['id']}/versions/"
    refused = bob.post(url, {"archive": io.BytesIO(bomb)}, format="multipart")
    assert refused.status_code == 413 and "decompression bomb" in refused.json()["archive"][0]
    assert not list((storage.root() / "models").rglob("zeros.safetensors"))
    # A pickle is refused by its name, before it is unpacked.
    pickled = hf_dir(tmp_path / "pickled", extra={"optimizer.pt": b"x" * 10})
    refused = bob.post(url, {"archive": io.BytesIO(tar_of(pickled))}, format="multipart")
    assert refused.status_code == 400 and "optimizer.pt" in refused.json()["archive"][0]
    assert not list((storage.root() / "models").rglob("optimizer.pt"))


def test_the_project_storage_quota_and_the_free_disk_are_enforced(cast, api, tmp_path, settings):
    good = tar_of(hf_dir(tmp_path / "ok"))
    bob = api(cast.bob)
    model = bob.post("/api/v1/models/", {"name": "quota", "project": "alpha"}).json()
    url = f"/api/v1/models/{model['id']}/versions/"
    # Only operators set the quota.
    alice = api(cast.alice)
    assert (
        alice.patch(f"/api/v1/projects/{cast.alpha.pk}/", {"max_storage_bytes": 10}).status_code
        == 403
    )
    olga = api(cast.olga)
    assert (
        olga.patch(f"/api/v1/projects/{cast.alpha.pk}/", {"max_storage_bytes": 100}).status_code
        == 200
    )
    refused = bob.post(url, {"archive": io.BytesIO(good)}, format="multipart")
    assert refused.status_code == 413 and "storage quota" in refused.json()["archive"][0]
    olga.patch(f"/api/v1/projects/{cast.alpha.pk}/", {"max_storage_bytes": None})
    # The disk keeps its reserve: asking for more free space than there is refuses it.
    settings.STORAGE_MIN_FREE_BYTES = 2**62
    full = bob.post(url, {"archive": io.BytesIO(good)}, format="multipart")
    assert full.status_code == 507 and "free" in full.json()["archive"][0]
    settings.STORAGE_MIN_FREE_BYTES = 0
    assert bob.post(url, {"archive": io.BytesIO(good)}, format="multipart").status_code == 201
    assert ModelVersion.objects.count() == 1
