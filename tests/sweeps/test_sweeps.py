"""Sweeps on the database side (issue 14): the search's validation, the trials it draws
and their specs, the controller keeping ``max_concurrent`` trials going, ASHA's
judgement on a report, cancel, roles and project scoping."""

from __future__ import annotations

import json

import pytest
from django.db import transaction

from controlplane.notifications.models import Delivery, Webhook
from jobs import outputs
from jobs.models import Job
from jobs.states import JobState
from jobs.sweeps import asha, space
from jobs.sweeps.models import Sweep, Trial
from tests.conftest import add_host

pytestmark = pytest.mark.django_db
RECIPE = {"entrypoint": ["python", "-m", "workers.recipes.causal_lm"],
          "args": ["--preset", "tiny", "--max-steps", "8"]}  # fmt: skip


def sweep_file(**changes) -> dict:
    data = {
        "name": "lr-sweep",
        "project": "alpha",
        "job": dict(RECIPE),
        "method": "grid",
        "parameters": {"lr": [0.001, 0.003], "warmup-steps": [0, 2]},
        "metric": "eval/eval_loss",
        "max_concurrent": 2,
    }
    data.update(changes)
    return data


@pytest.fixture
def client(cast, api):
    add_host("cpu-1", cpu_slots=4)
    return api(cast.bob)


@pytest.fixture
def run(django_capture_on_commit_callbacks):
    """``run(fn, *args)``: call it in a transaction and run what its commit triggers."""

    def call(fn, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
            return fn(*args, **kwargs)

    return call


def end(job_id: int, state: str) -> None:
    """Move the job to ``state`` as the lifecycle does (its commit tells the sweep)."""
    job = Job.objects.select_for_update().get(pk=job_id)
    if state == JobState.SUCCEEDED:
        for step in (JobState.SCHEDULED, JobState.RUNNING):
            job.save(update_fields=job.move_to(step))
    job.save(update_fields=job.move_to(state, reason="the test ended it"))


def create(client, data) -> dict:
    response = client.post("/api/v1/sweeps/", data, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def trials(sweep_id: int) -> list[Trial]:
    return list(Trial.objects.filter(sweep_id=sweep_id).select_related("job").order_by("number"))


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"method": "bayes"}, "method", "not a valid choice"),
        ({"parameters": {}}, "parameters", "at least one"),
        ({"parameters": {"lr": {"min": 0.1}}, "method": "random", "max_trials": 3},
         "parameters", "both min and max"),
        ({"parameters": {"lr": {"min": 1, "max": 0.5}}, "method": "random", "max_trials": 3},
         "parameters", "less than max"),
        ({"parameters": {"lr": {"min": 0, "max": 1, "log": True}}, "method": "random",
          "max_trials": 3}, "parameters", "min > 0"),
        ({"parameters": {"lr": {"min": 0.0, "max": 1.0}}}, "parameters", "range is for method"),
        ({"method": "random"}, "max_trials", "needs max_trials"),
        ({"parameters": {"--lr": [1]}}, "parameters", "hyperparameter name"),
        ({"parameters": {"lr": [[1]]}}, "parameters", "a number, true/false or a string"),
        ({"parameters": {f"p{i}": list(range(10)) for i in range(5)}}, "parameters",
         "limit is 10000"),
        ({"max_concurrent": 0}, "max_concurrent", "greater than or equal to 1"),
        ({"early_stopping": {"min_steps": 4, "max_steps": 4}}, "early_stopping", "more than"),
        ({"job": {**RECIPE, "name": "x"}}, "job", "are the sweep's"),
        ({"job": {**RECIPE, "args": ["--lr", "${hp.learning_rate}"]}}, "job", "names no hyper"),
        ({"job": {**RECIPE, "resources": {"nodes": 0}}}, "job", "resources"),
        ({"job": {"args": ["x"]}}, "job", "entrypoint"),
        ({"colour": "red"}, "colour", "Unknown field"),
        ({"project": "beta"}, "project", "No project named 'beta'"),
    ],
)  # fmt: skip
def test_a_bad_sweep_file_is_a_400_naming_the_field_and_creates_nothing(
    client, changes, field, words
):
    response = client.post("/api/v1/sweeps/", sweep_file(**changes), format="json")
    assert response.status_code in (400, 404), response.content
    body = response.json()
    assert field in json.dumps(body) and words in json.dumps(body), body
    assert Sweep.objects.count() == 0 and Job.objects.count() == 0


def test_a_grid_draws_every_point_once_in_order_and_random_is_seeded_within_range():
    grid = {"method": "grid", "parameters": {"a": {"values": [1, 2]},
                                             "b": {"values": ["x", "y", "z"]}}}  # fmt: skip
    assert [space.draw(grid, n) for n in range(space.trial_count(grid))] == [
        {"a": a, "b": b} for a in (1, 2) for b in ("x", "y", "z")
    ]
    search = {"method": "random", "seed": 7, "max_trials": 200, "parameters": {
        "lr": {"min": 1e-5, "max": 1e-1, "log": True, "type": "float"},
        "layers": {"min": 2, "max": 6, "log": False, "type": "int"},
        "opt": {"values": ["adam", "sgd"]}}}  # fmt: skip
    drawn = [space.draw(search, n) for n in range(200)]
    assert drawn == [space.draw(search, n) for n in range(200)]  # the same trials again
    assert all(1e-5 <= d["lr"] <= 1e-1 and 2 <= d["layers"] <= 6 for d in drawn)
    assert {d["layers"] for d in drawn} == {2, 3, 4, 5, 6} and {d["opt"] for d in drawn} == {
        "adam", "sgd"}  # fmt: skip
    small = sum(d["lr"] < 1e-3 for d in drawn)  # log-uniform: half the draws below 1e-3
    assert 70 < small < 130
    assert drawn != [space.draw({**search, "seed": 8}, n) for n in range(200)]


def test_asha_keeps_the_best_third_at_a_rung():
    assert asha.rungs(2, 20, 3) == [2, 6, 18]
    assert asha.judge(5.0, [], 0, 2, 3, "minimize").keep  # the first at a rung goes on
    assert not asha.judge(5.0, [1.0], 0, 2, 3, "minimize").keep
    assert asha.judge(0.5, [1.0, 2.0, 3.0], 0, 2, 3, "minimize").keep
    assert asha.cutoff([4.0, 1.0, 3.0, 2.0], 3, "minimize") == 2.0  # the best third's edge
    assert asha.judge(1.8, [1.0, 2.0, 3.0, 4.0], 0, 2, 3, "minimize").keep
    assert not asha.judge(2.5, [1.0, 2.0, 3.0, 4.0], 0, 2, 3, "minimize").keep
    assert not asha.judge(1.8, [1.0, 2.0, 3.0], 0, 2, 3, "minimize").keep  # cut 1.67
    assert asha.judge(0.9, [0.2, 0.8], 0, 2, 3, "maximize").keep


def test_a_grid_sweep_runs_max_concurrent_trials_then_the_rest_and_ends(client, cast, run):
    sweep = create(client, sweep_file())
    assert sweep["total"] == 4 and sweep["state"] == "RUNNING"
    first = trials(sweep["id"])
    assert [t.hparams for t in first] == [{"lr": 0.001, "warmup-steps": 0},
                                          {"lr": 0.001, "warmup-steps": 2}]  # fmt: skip
    job = first[1].job
    assert job.name == "lr-sweep-1" and job.args == [
        "--preset", "tiny", "--max-steps", "8", "--lr", "0.001", "--warmup-steps", "2"]  # fmt: skip
    assert job.tag_list == [f"sweep-{sweep['id']}"] and job.project == cast.alpha
    assert job.state == JobState.PENDING  # an ordinary job: the scheduler places it

    for value, trial in zip((3.0, 2.5), first, strict=True):
        run(outputs.record_metrics, trial.job_id, 1, 8, {"eval/eval_loss": value})
        run(end, trial.job_id, JobState.SUCCEEDED)
    after = trials(sweep["id"])
    assert len(after) == 4 and [t.state for t in after] == ["SUCCEEDED"] * 2 + ["LIVE"] * 2
    assert after[0].metric == 3.0 and after[0].metric_step == 8
    run(outputs.record_metrics, after[2].job_id, 1, 8, {"eval/eval_loss": 1.5})
    run(end, after[2].job_id, JobState.SUCCEEDED)
    run(end, after[3].job_id, JobState.FAILED)

    done = client.get(f"/api/v1/sweeps/{sweep['id']}/").json()
    assert done["state"] == "SUCCEEDED" and done["reason"] == "3 of 4 trial(s) ran."
    assert done["best"]["number"] == 2
    assert done["best"]["hparams"] == {"lr": 0.003, "warmup-steps": 0}
    assert done["counts"] == {"LIVE": 0, "SUCCEEDED": 3, "FAILED": 1, "CANCELLED": 0,
                              "STOPPED": 0}  # fmt: skip
    by_metric = client.get(f"/api/v1/sweeps/{sweep['id']}/trials/?ordering=metric").json()
    assert [t["number"] for t in by_metric] == [2, 1, 0, 3]  # no metric: last
    worst_first = client.get(f"/api/v1/sweeps/{sweep['id']}/trials/?ordering=-metric").json()
    assert [t["number"] for t in worst_first] == [0, 1, 2, 3]
    bad = client.get(f"/api/v1/sweeps/{sweep['id']}/trials/?ordering=colour")
    assert bad.status_code == 400 and "ordering" in bad.json()


def test_hyperparameters_go_where_the_spec_references_them(client):
    job = {**RECIPE, "args": ["--lr=${hp.lr}"], "env": {"WARMUP": "${hp.warmup}"}}
    data = sweep_file(job=job, parameters={"lr": [0.01], "warmup": [3], "seed": [5]})
    sweep = create(client, data)
    [trial] = trials(sweep["id"])
    assert trial.job.args == ["--lr=0.01", "--seed", "5"] and trial.job.env == {"WARMUP": "3"}


def test_asha_stops_a_trial_worse_than_the_others_at_the_first_rung(client, run):
    data = sweep_file(
        parameters={"lr": [0.1, 0.2, 5.0]}, metric="loss", max_concurrent=3,
        early_stopping={"min_steps": 2, "max_steps": 20, "reduction_factor": 3},
    )  # fmt: skip
    sweep = create(client, data)
    good, better, bad = trials(sweep["id"])
    assert run(outputs.record_metrics, good.job_id, 1, 1, {"loss": 0.9}) and not Trial.objects.get(
        pk=good.pk).rungs  # before the first rung: nothing judged  # fmt: skip
    run(outputs.record_metrics, good.job_id, 1, 2, {"loss": 0.5})
    run(outputs.record_metrics, better.job_id, 1, 3, {"loss": 0.3})  # past the rung: judged
    run(outputs.record_metrics, bad.job_id, 1, 2, {"loss": 40.0})
    good, better, bad = trials(sweep["id"])
    assert (good.state, better.state, bad.state) == ("LIVE", "LIVE", "STOPPED")
    assert good.rungs == {"0": 0.5} and better.rungs == {"0": 0.3} and bad.rungs == {"0": 40.0}
    assert bad.reason.startswith("Stopped early by ASHA at rung 1 (step 2): loss 40 is worse")
    assert bad.job.state == JobState.CANCELLED  # it was still queued: cancelled at once
    # The next rung (6): the better one is compared with nobody yet, then the good one with it.
    run(outputs.record_metrics, better.job_id, 1, 6, {"loss": 0.1})
    run(outputs.record_metrics, good.job_id, 1, 6, {"loss": 0.4})
    assert Trial.objects.get(pk=good.pk).state == "STOPPED"
    run(end, better.job_id, JobState.SUCCEEDED)
    done = Sweep.objects.get(pk=sweep["id"])
    assert done.state == "SUCCEEDED" and done.reason == "3 of 3 trial(s) ran."


def test_cancel_stops_the_live_trials_and_submits_no_more(client, cast, api, run):
    sweep = create(client, sweep_file(max_concurrent=1))
    other = api(cast.dave).post(f"/api/v1/sweeps/{sweep['id']}/cancel/")
    assert other.status_code == 404  # another project's sweep is not there
    viewer = api(cast.carol).post(f"/api/v1/sweeps/{sweep['id']}/cancel/")
    assert viewer.status_code == 403
    assert api(cast.dave).get("/api/v1/sweeps/").json()["count"] == 0
    with transaction.atomic():
        response = run(client.post, f"/api/v1/sweeps/{sweep['id']}/cancel/")
    assert response.status_code == 200 and response.json()["state"] == "CANCELLED"
    [trial] = trials(sweep["id"])
    assert trial.state == "CANCELLED" and trial.job.state == JobState.CANCELLED
    again = client.post(f"/api/v1/sweeps/{sweep['id']}/cancel/")
    assert again.status_code == 409 and "CANCELLED already" in again.json()["detail"]


def test_the_end_of_a_sweep_is_a_webhook_delivery(client, cast, run, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    Webhook.objects.create(project=cast.alpha, name="ci", url="http://127.0.0.1:9/hook",
                           events=["sweep.succeeded", "sweep.failed"],
                           secret_ciphertext=b"")  # fmt: skip
    sweep = create(client, sweep_file(parameters={"lr": [0.1]}))
    [trial] = trials(sweep["id"])
    run(end, trial.job_id, JobState.FAILED)
    [delivery] = Delivery.objects.all()
    assert delivery.event == "sweep.failed"
    assert delivery.payload["sweep"]["id"] == sweep["id"]
    assert delivery.payload["sweep"]["reason"] == "None of its 1 trial(s) ran to its end."


def test_the_pages_list_a_sweep_and_show_its_trials_best_first(client, cast, run):
    from django.test import Client

    sweep = create(client, sweep_file(parameters={"lr": [0.1, 0.2, 0.3]}, max_concurrent=3))
    for trial, value in zip(trials(sweep["id"]), (2.0, 0.5, 1.0), strict=True):
        run(outputs.record_metrics, trial.job_id, 1, 4, {"eval/eval_loss": value})
    browser = Client()
    browser.force_login(cast.bob)
    listing = browser.get("/sweeps/").content.decode()
    assert f'data-sweep="{sweep["id"]}"' in listing and "lr-sweep" in listing
    page = browser.get(f"/sweeps/{sweep['id']}/?sort=metric").content.decode()
    rows = page.split("<tbody>")[1].split("</tbody>")[0]
    order = [int(r.split('"')[0]) for r in rows.split('data-trial="')[1:]]
    assert order == [1, 2, 0]
    assert '<tr data-trial="1" class="best">' in page and "Cancel sweep" in page
    assert 'id="sweep-chart"' in page and "sweeps/sweep.js" in page

    outsider = Client()
    outsider.force_login(cast.dave)
    assert outsider.get(f"/sweeps/{sweep['id']}/").status_code == 404
    assert f'data-sweep="{sweep["id"]}"' not in outsider.get("/sweeps/").content.decode()
    viewer = Client()
    viewer.force_login(cast.carol)
    assert "Cancel sweep" not in viewer.get(f"/sweeps/{sweep['id']}/").content.decode()
    assert viewer.post(f"/sweeps/{sweep['id']}/cancel/").status_code == 403
    done = run(browser.post, f"/sweeps/{sweep['id']}/cancel/")
    assert done.status_code == 302 and Sweep.objects.get(pk=sweep["id"]).state == "CANCELLED"
    assert "Cancel sweep" not in browser.get(f"/sweeps/{sweep['id']}/").content.decode()


def test_the_admin_shows_a_sweep_and_its_trials_read_only(client, cast):
    from django.test import Client

    sweep = create(client, sweep_file())
    admin = Client()
    admin.force_login(cast.olga)
    listing = admin.get("/admin/sweeps/sweep/")
    assert listing.status_code == 200 and "lr-sweep" in listing.content.decode()
    page = admin.get(f"/admin/sweeps/sweep/{sweep['id']}/change/").content.decode()
    assert "lr-sweep-1" in page or "warmup-steps" in page
    assert admin.get("/admin/sweeps/sweep/add/").status_code == 403
