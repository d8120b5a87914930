"""The jobs API: bad specs and archives get 400s with field errors and create nothing;
roles and project scoping; logs, metrics, attempts and checkpoints."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
from django.test import Client, override_settings

from jobs import outputs, scheduler, storage
from jobs.models import Job
from tests.conftest import add_host

pytestmark = pytest.mark.django_db
BUILTIN = ["python", "-m", "workers.recipes.causal_lm"]


def tar_of(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return buffer.getvalue()


def upload(client, spec: dict | str, archive: bytes, filename: str = "code.tgz"):
    return client.post(
        "/api/v1/jobs/",
        {
            "spec": spec if isinstance(spec, str) else json.dumps(spec),
            "code": io.BytesIO(archive),
        },
        format="multipart",
    )


@pytest.fixture
def cluster(db):
    add_host("gpu-a", gpus=8, cpu_slots=4)


def nothing_created() -> None:
    assert Job.objects.count() == 0
    assert not storage.code_root().exists() or list(storage.code_root().iterdir()) == []


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"name": "x"}, "entrypoint", "required"),
        ({"entrypoint": BUILTIN}, "name", "required"),
        ({"name": "x", "entrypoint": "python train.py"}, "entrypoint", "not a shell string"),
        ({"name": "x", "entrypoint": []}, "entrypoint", ""),
        ({"name": "x", "entrypoint": BUILTIN, "resources": {"gpus_per_node": -1}}, "resources", ""),
        ({"name": "x", "entrypoint": BUILTIN, "resources": {"nodes": 0}}, "resources", ""),
        ({"name": "x", "entrypoint": BUILTIN, "priority": "urgent"}, "priority", "valid choice"),
        ({"name": "x", "entrypoint": BUILTIN, "max_runtime": "soon"}, "max_runtime", "duration"),
        (
            {"name": "x", "entrypoint": BUILTIN, "env": {"CUDA_VISIBLE_DEVICES": "0"}},
            "env",
            "launcher",
        ),
        ({"name": "x", "entrypoint": BUILTIN, "env": {"CP_TOKEN": "x"}}, "env", "launcher"),
        ({"name": "x", "entrypoint": BUILTIN, "env": {"1BAD": "x"}}, "env", "variable name"),
        ({"name": "x", "entrypoint": BUILTIN, "env": {"A": "${HOME}/x"}}, "env", "not expanded"),
        ({"name": "x", "entrypoint": BUILTIN, "env": {"A": "${CP_WORK_DIR"}}, "env", "only"),
        ({"name": "x", "entrypoint": BUILTIN, "args": ["--o", "${OUT}"]}, "args", "argument 1"),
        ({"name": "x", "entrypoint": BUILTIN, "outputs": ["../up"]}, "outputs", "no '..'"),
        ({"name": "x", "entrypoint": BUILTIN, "outputs": ["/abs"]}, "outputs", "relative"),
        ({"name": "x", "entrypoint": BUILTIN, "outputs": ["."]}, "outputs", "relative"),
        ({"name": "x", "entrypoint": BUILTIN, "gpus": 2}, "gpus", "Unknown field"),
        ({"name": "x", "entrypoint": BUILTIN, "max_restarts": -1}, "max_restarts", ""),
        ({"name": "x", "entrypoint": BUILTIN, "tags": ["a,b"]}, "tags", "at most 32"),
        ({"name": "x", "entrypoint": BUILTIN, "tags": "a"}, "tags", "list"),
        ({"name": "x", "entrypoint": BUILTIN, "tags": [f"t{i}" for i in range(17)]}, "tags", "16"),
        ({"name": "x", "entrypoint": BUILTIN, "project": "nope"}, "project", "No project"),
        (
            {"name": "x", "entrypoint": BUILTIN, "resources": {"nodes": 2, "gpus_per_node": 8}},
            "resources",
            "needs 2",
        ),
        (
            {"name": "x", "entrypoint": BUILTIN, "resources": {"gpus_per_node": 16}},
            "resources",
            "largest host has 8",
        ),
        ({"name": "x", "entrypoint": ["python", "train.py"]}, "entrypoint", "upload the code"),
        ({"name": "x", "entrypoint": ["python", "-m", "os"]}, "entrypoint", "built-in"),
        ({"name": "x", "entrypoint": BUILTIN, "code_path": "/etc"}, "code_path", "allowed"),
    ],
)
def test_bad_specs_get_field_errors_and_create_nothing(cast, api, cluster, spec, field, words):
    response = api(cast.bob).post("/api/v1/jobs/", {"project": "alpha", **spec})
    # A project that does not exist (for you) is a 404, as its URL would be.
    assert response.status_code == (404 if field == "project" else 400), response.json()
    assert field in response.json(), response.json()
    assert words in json.dumps(response.json())
    nothing_created()


def test_a_spec_as_yaml_text_with_an_archive_is_accepted(cast, api, cluster):
    spec = "name: from-yaml\nproject: alpha\nentrypoint: [python, train.py]\nargs: [--lr, 0.1]\n"
    response = upload(api(cast.bob), spec, tar_of({"proj/train.py": b"print('hi')\n"}))
    assert response.status_code == 201, response.json()
    job = Job.objects.get()
    assert job.args == ["--lr", "0.1"]
    code_dir = Path(job.code_dir)
    assert storage.code_root() in code_dir.parents
    assert (code_dir / "train.py").read_bytes() == b"print('hi')\n"  # proj/ became the root


@pytest.mark.parametrize(
    ("archive", "words"),
    [
        (tar_of({"../evil.py": b"x"}), "'..'"),
        (tar_of({"/etc/evil.py": b"x"}), "absolute"),
        (tar_of({"train.py": b"x"}, links={"link": "/etc/passwd"}), "links"),
        (b"not an archive at all", "Not a tar archive"),
        (tar_of({}), "empty"),
    ],
)
def test_unsafe_or_broken_archives_are_refused(cast, api, cluster, archive, words):
    spec = {"name": "x", "project": "alpha", "entrypoint": ["python", "train.py"]}
    response = upload(api(cast.bob), spec, archive)
    assert response.status_code == 400, response.json()
    assert words in response.json()["code"][0]
    nothing_created()


def test_zip_archives_with_traversal_are_refused(cast, api, cluster):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../../evil.py", "x")
    spec = {"name": "x", "project": "alpha", "entrypoint": ["python", "evil.py"]}
    response = upload(api(cast.bob), spec, buffer.getvalue(), "code.zip")
    assert response.status_code == 400 and "'..'" in response.json()["code"][0]
    nothing_created()


def test_a_script_missing_from_the_archive_is_refused_and_the_upload_removed(cast, api, cluster):
    spec = {"name": "x", "project": "alpha", "entrypoint": ["python", "missing.py"]}
    response = upload(api(cast.bob), spec, tar_of({"train.py": b"x"}))
    assert response.status_code == 400
    assert "not a file inside" in response.json()["entrypoint"][0]
    nothing_created()


@override_settings(JOB_CODE_MAX_BYTES=2048)
def test_an_oversized_upload_is_refused(cast, api, cluster):
    import os

    spec = {"name": "x", "project": "alpha", "entrypoint": ["python", "train.py"]}
    response = upload(api(cast.bob), spec, tar_of({"train.py": os.urandom(8000)}))
    assert response.status_code in (400, 413), response.status_code
    assert "limit" in json.dumps(response.json()) or "at most" in json.dumps(response.json())
    nothing_created()


def test_viewers_cannot_submit_or_cancel_and_strangers_see_nothing(cast, api, cluster):
    assert (
        api(cast.carol)
        .post("/api/v1/jobs/", {"name": "x", "project": "alpha", "entrypoint": BUILTIN})
        .status_code
        == 403
    )
    created = api(cast.bob).post(
        "/api/v1/jobs/", {"name": "x", "project": "alpha", "entrypoint": BUILTIN}
    )
    job_id = created.json()["id"]
    assert api(cast.carol).get(f"/api/v1/jobs/{job_id}/").status_code == 200
    assert api(cast.carol).post(f"/api/v1/jobs/{job_id}/cancel/").status_code == 403
    dave = api(cast.dave)
    for path in ("", "logs/", "metrics/", "attempts/", "checkpoints/"):
        assert dave.get(f"/api/v1/jobs/{job_id}/{path}").status_code == 404
    assert dave.post(f"/api/v1/jobs/{job_id}/cancel/").status_code == 404
    assert dave.get("/api/v1/jobs/").json()["count"] == 0
    assert Job.objects.get().state == "PENDING"


def test_a_waiting_job_says_why_and_where_it_is_in_the_queue(cast, api, cluster):
    bob = api(cast.bob)
    first = bob.post(
        "/api/v1/jobs/",
        {"name": "a", "project": "alpha", "entrypoint": BUILTIN, "resources": {"gpus_per_node": 8}},
    ).json()
    second = bob.post(
        "/api/v1/jobs/",
        {"name": "b", "project": "alpha", "entrypoint": BUILTIN, "resources": {"gpus_per_node": 8}},
    ).json()
    scheduler.schedule()
    detail = bob.get(f"/api/v1/jobs/{second['id']}/").json()
    assert detail["state"] == "PENDING"
    assert detail["reason"] == "Waiting for a host with 8 free GPUs."
    assert detail["queue_position"] == 0
    assert bob.get(f"/api/v1/jobs/{first['id']}/").json()["state"] == "SCHEDULED"
    gpus = bob.get("/api/v1/gpus/").json()["results"]
    assert {g["in_use_by"]["job"] for g in gpus} == {first["id"]}
    strangers = api(cast.dave).get("/api/v1/gpus/").json()["results"]
    assert all(g["in_use_by"] == {"kind": "job", "hidden": True} for g in strangers)


def test_cancelling_a_finished_job_is_a_409(cast, api, cluster):
    bob = api(cast.bob)
    job = bob.post("/api/v1/jobs/", {"name": "x", "project": "alpha", "entrypoint": BUILTIN}).json()
    assert bob.post(f"/api/v1/jobs/{job['id']}/cancel/").json()["state"] == "CANCELLED"
    again = bob.post(f"/api/v1/jobs/{job['id']}/cancel/")
    assert again.status_code == 409 and "CANCELLED already" in again.json()["detail"]


def test_logs_page_forward_from_a_cursor_and_metrics_downsample(cast, api, cluster):
    bob = api(cast.bob)
    job = bob.post("/api/v1/jobs/", {"name": "x", "project": "alpha", "entrypoint": BUILTIN}).json()
    for i in range(5):
        outputs.record_logs(job["id"], 1, 0, f"line {i}\n")
    page = bob.get(f"/api/v1/jobs/{job['id']}/logs/?limit=2").json()
    assert [c["text"] for c in page["chunks"]] == ["line 0\n", "line 1\n"]
    rest = bob.get(f"/api/v1/jobs/{job['id']}/logs/?since={page['next']}").json()
    assert [c["text"] for c in rest["chunks"]] == ["line 2\n", "line 3\n", "line 4\n"]
    assert bob.get(f"/api/v1/jobs/{job['id']}/logs/?since=-1").status_code == 400
    for step in range(100):
        outputs.record_metrics(job["id"], 1, step, {"loss": float(step), "bad": float("nan")})
    series = bob.get(f"/api/v1/jobs/{job['id']}/metrics/?name=loss&max_points=10").json()
    assert series["names"] == ["loss"]
    points = series["series"]["loss"]
    assert len(points) == 10 and points[0] == [9, 4.5] and points[-1] == [99, 94.5]
    assert Job.objects.get(pk=job["id"]).progress["step"] == 99


def test_checkpoints_show_their_id_and_a_path_relative_to_the_storage_root(cast, api, cluster):
    from jobs import storage

    bob = api(cast.bob)
    job = bob.post("/api/v1/jobs/", {"name": "x", "project": "alpha", "entrypoint": BUILTIN}).json()
    ckpt = storage.checkpoint_root(job["id"]) / "step-3"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"x")
    made = outputs.record_checkpoint(job["id"], None, 3, str(ckpt))
    [shown] = bob.get(f"/api/v1/jobs/{job['id']}/checkpoints/").json()
    assert shown["id"] == made.pk
    assert shown["path"] == f"jobs/{job['id']}/checkpoints/step-3"
    assert str(storage.root()) not in str(bob.get(f"/api/v1/jobs/{job['id']}/").json())


def test_outputs_are_listed_and_served_to_the_project_only(cast, api, cluster):
    from jobs import storage
    from serving.services import storage_used

    bob = api(cast.bob)
    made = bob.post(
        "/api/v1/jobs/",
        {"name": "x", "project": "alpha", "entrypoint": BUILTIN, "outputs": ["outputs", "runs/"]},
    ).json()
    assert made["spec"]["outputs"] == ["outputs", "runs"]
    root = storage.output_root(made["id"])
    (root / "outputs" / "deep").mkdir(parents=True)
    (root / "outputs" / "deep" / "a.bin").write_bytes(b"a" * 300)
    (root / "top.json").write_text("{}")
    (root / "secret-link").symlink_to("/etc/hostname")
    (root / "dir-link").symlink_to("/etc", target_is_directory=True)
    outputs.record_outputs_size(made["id"], 302)
    base = f"/api/v1/jobs/{made['id']}/outputs/"
    carol = api(cast.carol)  # a viewer reads them too
    listed = carol.get(base).json()
    assert [(f["path"], f["size"]) for f in listed["files"]] == [
        ("outputs/deep/a.bin", 300), ("top.json", 2)
    ]  # fmt: skip
    assert listed["total_bytes"] == 302 and not listed["truncated"]
    assert [f["path"] for f in carol.get(base, {"prefix": "outputs/"}).json()["files"]] == [
        "outputs/deep/a.bin"
    ]
    assert carol.get(base + "file/", {"path": "outputs/deep/a.bin"}).status_code == 200
    for path in ("secret-link", "dir-link/hostname", "nope.txt"):
        assert carol.get(base + "file/", {"path": path}).status_code == 404, path
    for path in ("../../x", "/etc/hostname", "a//b", ""):
        bad = carol.get(base + "file/", {"path": path})
        assert bad.status_code == 400 and "path" in bad.json(), path
    assert carol.get(base + "archive/", {"prefix": "../"}).status_code == 400
    assert carol.get(base, {"bogus": "1"}).status_code == 400
    for url in (base, base + "file/?path=top.json", base + "archive/"):
        assert api(cast.dave).get(url).status_code == 404  # another project's job
    assert storage_used(cast.alpha) == 302 and storage_used(cast.beta) == 0
    browser = Client()
    browser.force_login(cast.carol)
    page = browser.get(f"/jobs/{made['id']}/").content.decode()
    assert f"{base}file/?path=outputs/deep/a.bin" in page and f"{base}archive/" in page
    assert "2 files" in page and "secret-link" not in page
