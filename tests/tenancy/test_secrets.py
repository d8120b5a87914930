"""Project secrets: write-only, encrypted outside the database, names for members, values
for project admins to set only, referred to by name in a spec."""

from __future__ import annotations

import pytest

from controlplane.tenancy import secrets
from controlplane.tenancy.models import AuditEvent, ProjectSecret

pytestmark = pytest.mark.django_db
VALUE = "hf_live_" + "x" * 30


def url(project, name: str = "") -> str:
    return f"/api/v1/projects/{project.pk}/secrets/" + (f"{name}/" if name else "")


def test_an_admin_sets_a_secret_that_no_one_can_read_back(api, cast):
    created = api(cast.alice).post(url(cast.alpha), {"name": "hf", "value": VALUE}, "json")
    assert created.status_code == 201, created.content
    assert set(created.json()) == {"name", "created_at", "updated_at"}
    for user in (cast.alice, cast.bob, cast.carol):  # admin, member, viewer
        listed = api(user).get(url(cast.alpha))
        assert listed.status_code == 200
        assert [s["name"] for s in listed.json()["results"]] == ["hf"]
        assert VALUE not in listed.content.decode()
        one = api(user).get(url(cast.alpha, "hf"))
        assert one.status_code == 200 and VALUE not in one.content.decode()
    stored = ProjectSecret.objects.get(project=cast.alpha, name="hf")
    assert VALUE.encode() not in bytes(stored.ciphertext)  # encrypted at rest
    assert secrets.reveal(cast.alpha.pk, {"hf"}) == {"hf": VALUE}
    event = AuditEvent.objects.get(action="secret.created")
    assert VALUE not in str(event.detail) and event.detail == {"name": "hf"}


def test_only_admins_write_and_outsiders_see_nothing(api, cast):
    api(cast.alice).post(url(cast.alpha), {"name": "hf", "value": VALUE}, "json")
    member = api(cast.bob).post(url(cast.alpha), {"name": "wandb", "value": "v"}, "json")
    assert member.status_code == 403
    assert api(cast.carol).put(url(cast.alpha, "hf"), {"value": "new"}, "json").status_code == 403
    assert api(cast.bob).delete(url(cast.alpha, "hf")).status_code == 403
    assert api(cast.dave).get(url(cast.alpha)).status_code == 404  # another project's
    assert api(cast.dave).get(url(cast.alpha, "hf")).status_code == 404
    replaced = api(cast.alice).put(url(cast.alpha, "hf"), {"value": "rotated"}, "json")
    assert replaced.status_code == 200
    assert secrets.reveal(cast.alpha.pk, {"hf"}) == {"hf": "rotated"}
    assert api(cast.alice).delete(url(cast.alpha, "hf")).status_code == 204
    assert not ProjectSecret.objects.exists()


def test_bad_secrets_are_refused_with_a_message(api, cast):
    client = api(cast.alice)
    for body, field in (
        ({"name": "../x", "value": "v"}, "name"),
        ({"name": "ok"}, "value"),
        ({"name": "ok", "value": ""}, "value"),
        ({"name": "ok", "value": "v", "extra": 1}, "extra"),
    ):
        response = client.post(url(cast.alpha), body, "json")
        assert response.status_code == 400, (body, response.content)
        assert field in response.json(), response.json()
    assert not ProjectSecret.objects.exists()


def test_a_spec_refers_to_secrets_by_name_and_the_job_shows_only_the_name(api, cast, hosts):
    api(cast.alice).post(url(cast.alpha), {"name": "hf", "value": VALUE}, "json")
    spec = {
        "name": "uses-secret",
        "project": "alpha",
        "entrypoint": ["python", "-m", "workers.recipes.causal_lm"],
        "env": {"HF_TOKEN": {"secret": "hf"}, "PLAIN": "1"},
    }
    created = api(cast.bob).post("/api/v1/jobs/", spec, "json")
    assert created.status_code == 201, created.content
    detail = api(cast.bob).get(f"/api/v1/jobs/{created.json()['id']}/")
    assert VALUE not in detail.content.decode()
    assert detail.json()["spec"]["env"]["HF_TOKEN"] == {"secret": "hf"}
    missing = api(cast.bob).post(
        "/api/v1/jobs/", {**spec, "env": {"T": {"secret": "nope"}}}, "json"
    )
    assert missing.status_code == 400 and "no secret named nope" in missing.content.decode()
    malformed = api(cast.bob).post(
        "/api/v1/jobs/", {**spec, "env": {"T": {"secret": "a", "b": 1}}}, "json"
    )
    assert malformed.status_code == 400 and "env" in malformed.json()


def test_the_admin_writes_a_secret_and_never_shows_it(cast, client):
    client.force_login(cast.olga)
    added = client.post(
        "/admin/tenancy/projectsecret/add/",
        {"project": cast.alpha.pk, "name": "wandb", "value": VALUE},
    )
    assert added.status_code == 302, added.content.decode()[:2000]
    secret = ProjectSecret.objects.get(project=cast.alpha, name="wandb")
    assert secrets.reveal(cast.alpha.pk, {"wandb"}) == {"wandb": VALUE}
    for page in (
        "/admin/tenancy/projectsecret/",
        f"/admin/tenancy/projectsecret/{secret.pk}/change/",
    ):
        response = client.get(page)
        assert response.status_code == 200 and VALUE not in response.content.decode()
    bad = client.post(
        "/admin/tenancy/projectsecret/add/", {"project": cast.alpha.pk, "name": "a b"}
    )
    assert bad.status_code == 200 and ProjectSecret.objects.count() == 1
    assert AuditEvent.objects.filter(action="secret.created", actor=cast.olga).exists()
