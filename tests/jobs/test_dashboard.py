"""The jobs pages as actions: the list's filters, the submit form and YAML editor, clone,
cancel, resubmit, register a checkpoint, the full log, compare, and the list's live feed.
Every action goes through the API's services, so it answers with the API's messages and
roles; a viewer sees no buttons and gets 403 for a post."""

from __future__ import annotations

import io
import re
import tarfile
import time

import pytest
from django.test import Client

from controlplane.tenancy.models import AuditEvent
from controlplane.tenancy.services import Actor, create_token
from jobs import outputs, queries, rollups, storage
from jobs.models import Job, Metric, MetricRollup
from tests.asyncio_helpers import run
from tests.conftest import add_host

FIELDS = ("name", "width", "bucket", "n", "first_step", "total", "last_step", "last_value",
          "last_time", "last_id")  # fmt: skip

pytestmark = pytest.mark.django_db
BUILTIN = ["python", "-m", "workers.recipes.causal_lm"]


@pytest.fixture
def hosts(db):
    add_host("gpu-a", gpus=2, cpu_slots=4)


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def listed(client: Client, query: str = "") -> list[int]:
    html = client.get(f"/jobs/{query}").content.decode()
    return [int(n) for n in re.findall(r'<tr data-job="(\d+)"', html)]


def test_the_list_filters_searches_sorts_and_pages_keeping_its_filters(cast, hosts, submit):
    a = submit(name="sweep-a")
    b = submit(name="sweep-b", priority="high")
    other = submit(cast.alice, name="baseline")
    submit(cast.dave, name="sweep-beta", project="beta")
    bob = login(cast.bob)
    assert listed(bob) == [other.pk, b.pk, a.pk]  # newest first, beta's job not shown
    assert listed(bob, "?q=sweep") == [b.pk, a.pk]
    assert listed(bob, f"?q=%23{a.pk}") == [a.pk]
    assert listed(bob, "?user=alice") == [other.pk]
    assert listed(bob, "?sort=-priority") == [b.pk, other.pk, a.pk]
    assert listed(bob, "?project=beta") == listed(bob)  # not one of bob's: filter refused
    Job.objects.filter(pk=a.pk).update(state="SUCCEEDED")
    assert listed(bob, "?state=active") == [other.pk, b.pk]
    assert listed(bob, "?state=SUCCEEDED") == [a.pk]
    assert listed(bob, "?created_after=2999-01-01") == []
    tagged = submit(name="tagged", tags=["lr-sweep", "v2", "lr-sweep"])
    submit(name="near-miss", tags=["lr-sweep-old"])  # a tag that only starts the same
    assert tagged.tag_list == ["lr-sweep", "v2"]  # once each, in order
    assert listed(bob, "?tag=lr-sweep") == [tagged.pk]
    assert 'href="/jobs/?tag=v2"' in bob.get(f"/jobs/{tagged.pk}/").content.decode()
    api = bob.get("/api/v1/jobs/", {"tag": "v2"}).json()
    assert [(j["id"], j["tags"]) for j in api["results"]] == [(tagged.pk, ["lr-sweep", "v2"])]
    Job.objects.filter(pk__in=[tagged.pk]).delete()
    Job.objects.filter(name="near-miss").delete()
    bad = bob.get("/jobs/?created_after=yesterday")
    assert bad.status_code == 200 and "Enter a valid date" in bad.content.decode()
    for i in range(55):
        submit(name=f"bulk-{i}")
    first = bob.get("/jobs/?q=bulk").content.decode()
    assert "page 1 of 2" in first and "?q=bulk&amp;page=2" in first
    assert len(listed(bob, "?q=bulk&page=2")) == 5


def test_the_recipe_form_submits_a_job_and_shows_the_apis_errors_on_its_fields(cast, hosts):
    bob = login(cast.bob)
    page = bob.get("/jobs/new/").content.decode()
    assert 'name="max_steps"' in page and 'name="spec"' in page
    form = {"mode": "recipe", "name": "tiny-lm", "project": "alpha", "preset": "tiny",
            "max_steps": "40", "precision": "fp32", "strategy": "ddp", "nodes": "1",
            "gpus_per_node": "0", "procs_per_node": "2", "priority": "normal"}  # fmt: skip
    too_big = bob.post("/jobs/new/", {**form, "gpus_per_node": "9"})
    assert too_big.status_code == 400
    html = too_big.content.decode()
    assert "No online host has 9 GPUs" in html or "9 GPU" in html, html[:3000]
    bad_name = bob.post("/jobs/new/", {**form, "name": "has spaces!"})
    assert bad_name.status_code == 400 and Job.objects.count() == 0
    bad_tag = bob.post("/jobs/new/", {**form, "tags": "ok, not ok!"})
    assert bad_tag.status_code == 400 and Job.objects.count() == 0
    # The API's message sits on the tags field (its error list comes right after the input).
    assert re.search(r'name="tags".*?at most 32', bad_tag.content.decode(), re.S)
    done = bob.post("/jobs/new/", {**form, "tags": "first-run, tiny"})
    job = Job.objects.get()
    assert done.status_code == 302 and done["Location"] == f"/jobs/{job.pk}/"
    assert job.args == ["--preset", "tiny", "--max-steps", "40", "--precision", "fp32",
                        "--strategy", "ddp"]  # fmt: skip
    assert (job.procs_per_node, job.created_by) == (2, cast.bob)
    assert job.tag_list == ["first-run", "tiny"]
    assert AuditEvent.objects.filter(action="job.submitted", object_id=str(job.pk)).exists()


def code_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        data = b"print('hello')\n"
        info = tarfile.TarInfo("train.py")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_a_yaml_spec_with_code_then_clone_and_edit_keeps_the_code(cast, hosts):
    bob = login(cast.bob)
    broken = bob.post("/jobs/new/", {"mode": "yaml", "spec": "name: [unclosed"})
    assert broken.status_code == 400 and "Not valid YAML or JSON" in broken.content.decode()
    missing = bob.post(
        "/jobs/new/", {"mode": "yaml", "spec": "name: x\nentrypoint: [python, train.py]\n"}
    )
    assert missing.status_code == 400 and Job.objects.count() == 0
    spec = "name: hello\nproject: alpha\nentrypoint: [python, train.py]\nargs: [--lr, '0.1']\n"
    upload = io.BytesIO(code_tar())
    upload.name = "code.tgz"
    made = bob.post("/jobs/new/", {"mode": "yaml", "spec": spec, "code": upload})
    assert made.status_code == 302, made.content.decode()[:2000]
    first = Job.objects.get()
    clone_page = bob.get(f"/jobs/new/?from={first.pk}").content.decode()
    assert "a clone of" in clone_page and "entrypoint:" in clone_page and "--lr" in clone_page
    edited = spec.replace("'0.1'", "'0.2'")
    again = bob.post(f"/jobs/new/?from={first.pk}", {"mode": "yaml", "spec": edited})
    assert again.status_code == 302, again.content.decode()[:2000]
    clone = Job.objects.exclude(pk=first.pk).get()
    assert clone.args == ["--lr", "0.2"] and clone.code_dir == first.code_dir
    assert storage.shown(clone.code_dir) if hasattr(storage, "shown") else clone.code_dir
    assert login(cast.dave).get(f"/jobs/new/?from={first.pk}").status_code == 404


def test_cancel_and_resubmit_from_the_pages_and_a_viewer_sees_no_buttons(cast, hosts, submit):
    job = submit(name="to-cancel")
    viewer = login(cast.carol)
    page = viewer.get(f"/jobs/{job.pk}/").content.decode()
    assert "Cancel</button>" not in page and "Clone and edit" not in page
    assert "Submit a job" not in viewer.get("/jobs/").content.decode()
    assert viewer.post(f"/jobs/{job.pk}/cancel/").status_code == 403
    assert viewer.get("/jobs/new/").status_code == 403
    assert viewer.post("/jobs/new/", {"mode": "yaml", "spec": "name: x"}).status_code == 403
    assert login(cast.dave).post(f"/jobs/{job.pk}/cancel/").status_code == 404
    bob = login(cast.bob)
    assert "Cancel</button>" in bob.get(f"/jobs/{job.pk}/").content.decode()
    done = bob.post(f"/jobs/{job.pk}/cancel/", {"next": "/jobs/?state=active"})
    assert done.status_code == 302 and done["Location"] == "/jobs/?state=active"
    job.refresh_from_db()
    assert job.state == "CANCELLED"
    again = bob.post(f"/jobs/{job.pk}/cancel/", {"next": "https://evil.example/"}, follow=True)
    assert "CANCELLED already" in again.content.decode()
    assert again.redirect_chain[-1][0] == f"/jobs/{job.pk}/"  # not off-site
    copy = bob.post(f"/jobs/{job.pk}/resubmit/")
    new = Job.objects.exclude(pk=job.pk).get()
    assert copy["Location"] == f"/jobs/{new.pk}/" and new.state == "PENDING"


def test_the_log_downloads_whole_and_the_attempts_and_row_fragments(cast, hosts, submit):
    job = submit(name="logged")
    for i in range(1200):
        outputs.record_logs(job.pk, 1, 0, f"line {i}\n")
    bob = login(cast.bob)
    response = bob.get(f"/jobs/{job.pk}/log.txt")
    text = b"".join(response.streaming_content).decode()
    assert response["Content-Disposition"] == f'attachment; filename="job-{job.pk}.log"'
    assert text.splitlines() == [f"line {i}" for i in range(1200)]
    assert login(cast.dave).get(f"/jobs/{job.pk}/log.txt").status_code == 404
    assert "Not placed yet" in bob.get(f"/jobs/{job.pk}/attempts/").content.decode()
    row = bob.get(f"/jobs/{job.pk}/row/?state=active")
    assert row.status_code == 200 and f'data-job="{job.pk}"' in row.content.decode()
    assert 'value="/jobs/?state=active"' in row.content.decode()  # cancel comes back here
    assert bob.get(f"/jobs/{job.pk}/row/?state=SUCCEEDED").status_code == 204


def test_scalars_are_values_and_series_are_charts_and_progress_keeps_its_total(cast, hosts, submit):
    job = submit(name="scalars")
    outputs.record_metrics(job.pk, 1, 0, {"system/world_size": 2, "system/params": 1e6})
    for step in range(1, 11):
        outputs.record_metrics(job.pk, 1, step, {"loss": 10.0 / step}, total=10)
    outputs.record_metrics(job.pk, 1, 10, {"final_eval_loss": 0.5})  # no total given
    job.refresh_from_db()
    assert job.progress["total"] == 10 and job.progress["step"] == 10
    assert queries.series_names(job) == ["loss"]
    assert queries.scalars(job) == {"final_eval_loss": 0.5, "loss": 1.0,
                                    "system/params": 1e6, "system/world_size": 2.0}  # fmt: skip
    html = login(cast.bob).get(f"/jobs/{job.pk}/").content.decode()
    assert 'data-metric="system/world_size"' in html and "step 10 / 10" in html
    assert 'data-mode="cpu"' in html and "CPU and memory" in html  # no GPU block


def test_series_are_downsampled_in_the_database(cast, hosts, submit):
    job = submit(name="long")
    Metric.objects.bulk_create(
        Metric(job=job, step=s, name=n, value=float(s)) for n in ("a", "b") for s in range(20_000)
    )
    rollups.rebuild(job.pk)  # rows written without record_metrics
    started = time.perf_counter()
    series = queries.metric_series(job, max_points=1000, with_time=True)
    assert time.perf_counter() - started < 5
    # 20x max_points: from the rollups, 64 steps a bucket (the narrowest width that fits).
    assert {n: len(p) for n, p in series.items()} == {"a": 313, "b": 313}
    assert series["a"][0][:2] == [63, 31.5] and series["a"][-1][:2] == [19_999, 19_983.5]
    # Up to 4x max_points: averaged from the points over exactly max_points equal ranges.
    exact = queries.metric_series(job, names=["a"], max_points=5000)
    assert len(exact["a"]) == 5000 and exact["a"][0] == [3, 1.5]
    assert queries.metric_counts(job) == {"a": 20_000, "b": 20_000}
    assert queries.scalars(job) == {"a": 19_999.0, "b": 19_999.0}


def test_rollups_kept_as_reports_arrive_equal_a_rebuild_from_the_points(cast, hosts, submit):
    job = submit(name="rolled")
    for step in [*range(300), *range(250, 260)]:  # a resumed attempt reports 250-259 again
        outputs.record_metrics(job.pk, 1, step, {"loss": 1000.0 - step, "lr": step * 1e-4})
    kept = sorted(MetricRollup.objects.filter(job=job).values_list(*FIELDS))
    assert len(kept) == 2 * (1 + sum(-(-300 // w) for w in rollups.WIDTHS))
    rollups.rebuild(job.pk)
    again = sorted(MetricRollup.objects.filter(job=job).values_list(*FIELDS))
    assert len(kept) == len(again)
    for a, b in zip(kept, again, strict=True):  # sums may differ in the last bit (order)
        assert a[:5] + a[6:] == b[:5] + b[6:] and a[5] == pytest.approx(b[5], rel=1e-12)
    whole = rollups.summaries(job.pk)["loss"]
    assert (whole.n, whole.first_step, whole.last_step) == (310, 0, 299)
    assert whole.last_value == 701.0  # the value at the last step, not the last report's
    first = MetricRollup.objects.get(job=job, name="loss", width=16, bucket=0)
    assert (first.n, first.total, first.last_step) == (16, sum(1000.0 - s for s in range(16)), 15)


def test_compare_overlays_and_diffs_only_jobs_you_can_see(cast, hosts, submit):
    a = submit(name="lr-1", args=["--lr", "0.001"])
    b = submit(name="lr-2", args=["--lr", "0.002"])
    hidden = submit(cast.dave, name="theirs", project="beta")
    html = login(cast.bob).get(f"/jobs/compare/?ids={a.pk},{b.pk},{hidden.pk}").content.decode()
    assert f"#{a.pk} lr-1" in html and f"#{b.pk} lr-2" in html and "theirs" not in html
    diff = re.search(r'<table class="list" id="spec-diff">(.*?)</table>', html, re.S).group(1)
    differing = re.findall(r'<tr class="differs"><td><code>([^<]+)</code>', diff)
    assert differing == ["args", "name"], differing
    assert "jobs/compare.js" in html


def test_registering_a_checkpoint_from_the_job_page(cast, hosts, submit):
    job = submit(name="ckpt")
    path = storage.checkpoint_root(job.pk) / "step-4"
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    ckpt = outputs.record_checkpoint(job.pk, None, 4, str(path))
    bob = login(cast.bob)
    page = bob.get(f"/jobs/{job.pk}/").content.decode()
    assert f'name="checkpoint" value="{ckpt.pk}"' in page
    refused = bob.post(f"/jobs/{job.pk}/register/", {"checkpoint": ckpt.pk, "model": ""},
                       follow=True)  # fmt: skip
    assert "Name the model" in refused.content.decode()
    done = bob.post(f"/jobs/{job.pk}/register/", {"checkpoint": ckpt.pk, "model": "from-page"},
                    follow=True)  # fmt: skip
    text = done.content.decode()
    assert "is from-page v1" in text, text[:3000]
    assert (
        login(cast.carol)
        .post(f"/jobs/{job.pk}/register/", {"checkpoint": ckpt.pk, "model": "x"})
        .status_code
        == 403
    )


@pytest.mark.django_db(transaction=True)
def test_the_list_socket_sends_state_and_progress_of_your_projects_only(cast):
    from channels.db import database_sync_to_async
    from channels.testing import WebsocketCommunicator

    from controlplane.asgi import application
    from jobs import services

    add_host("cpu-1", cpu_slots=2)
    _, mine = create_token(Actor.system(), cast.bob, "ws")
    _, theirs = create_token(Actor.system(), cast.dave, "ws")

    def submit(user, project):
        spec = {"name": "live", "project": project, "entrypoint": BUILTIN}
        return services.submit_job(Actor(user=user), spec)

    def socket(raw):
        auth = [(b"authorization", f"Bearer {raw}".encode())]
        return WebsocketCommunicator(application, "/ws/jobs/", headers=auth)

    async def scenario():
        bob, dave = socket(mine), socket(theirs)
        assert (await bob.connect(timeout=5))[0] and (await dave.connect(timeout=5))[0]
        assert (await bob.receive_json_from(timeout=5))["type"] == "hello"
        assert (await dave.receive_json_from(timeout=5))["type"] == "hello"
        job = await database_sync_to_async(submit)(cast.bob, "alpha")
        created = await bob.receive_json_from(timeout=5)
        await database_sync_to_async(outputs.record_metrics)(job.pk, 1, 3, {"loss": 1.0}, 9)
        progress = await bob.receive_json_from(timeout=5)
        nothing = await dave.receive_nothing(timeout=0.5)
        await bob.disconnect()
        await dave.disconnect()
        return job, created, progress, nothing

    job, created, progress, nothing = run(scenario)
    assert (created["type"], created["job"], created["state"]) == ("state", job.pk, "PENDING")
    assert progress == {"v": 1, "type": "progress", "job": job.pk, "step": 3, "total": 9}
    assert nothing
