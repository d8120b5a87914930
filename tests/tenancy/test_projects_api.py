"""Projects and members over the REST API: who may see and do what."""

from __future__ import annotations

import pytest

from controlplane.tenancy.models import AuditEvent, Membership, Project, Role

pytestmark = pytest.mark.django_db


def test_a_user_lists_only_their_projects_with_their_role(cast, api):
    response = api(cast.bob).get("/api/v1/projects/")
    assert response.status_code == 200
    assert [(p["name"], p["role"]) for p in response.json()["results"]] == [("alpha", "member")]


def test_an_operator_sees_every_project_as_admin(cast, api):
    response = api(cast.olga).get("/api/v1/projects/")
    names = {p["name"]: p["role"] for p in response.json()["results"]}
    assert names == {"alpha": "admin", "beta": "admin"}


def test_another_projects_objects_are_404_not_403(cast, api):
    dave = api(cast.dave)
    alpha = cast.alpha.pk
    assert dave.get(f"/api/v1/projects/{alpha}/").status_code == 404
    assert dave.patch(f"/api/v1/projects/{alpha}/", {"max_gpus": 9}).status_code == 404
    assert dave.get(f"/api/v1/projects/{alpha}/members/").status_code == 404
    assert dave.get(f"/api/v1/projects/{alpha}/members/bob/").status_code == 404
    assert dave.post(f"/api/v1/projects/{alpha}/members/", {"username": "dave"}).status_code == 404
    assert dave.delete(f"/api/v1/projects/{alpha}/members/bob/").status_code == 404
    assert Membership.objects.filter(project=cast.alpha).count() == 3
    assert Project.objects.get(pk=alpha).max_gpus is None


def test_only_operators_create_projects_and_the_creator_becomes_admin(cast, api):
    refused = api(cast.alice).post("/api/v1/projects/", {"name": "gamma"})
    assert refused.status_code == 403
    assert "operator" in refused.json()["detail"]
    assert not Project.objects.filter(name="gamma").exists()

    created = api(cast.olga).post(
        "/api/v1/projects/", {"name": "gamma", "max_gpus": 8, "max_concurrent_jobs": 2}
    )
    assert created.status_code == 201, created.json()
    body = created.json()
    assert (body["name"], body["max_gpus"], body["max_concurrent_jobs"], body["role"]) == (
        "gamma",
        8,
        2,
        "admin",
    )
    assert Membership.objects.get(project__name="gamma").user == cast.olga
    event = AuditEvent.objects.get(action="project.created", object_id=str(body["id"]))
    assert event.actor == cast.olga and event.ip == "127.0.0.1" and event.via == "api"


def test_a_duplicate_project_name_is_a_409(cast, api):
    response = api(cast.olga).post("/api/v1/projects/", {"name": "alpha"})
    assert response.status_code == 409
    assert "exists already" in response.json()["name"][0]


def test_project_admins_set_quotas_members_and_viewers_cannot(cast, api):
    url = f"/api/v1/projects/{cast.alpha.pk}/"
    for user in (cast.bob, cast.carol):
        response = api(user).patch(url, {"max_gpus": 64})
        assert response.status_code == 403
        assert "admin role" in response.json()["detail"]
    response = api(cast.alice).patch(url, {"max_gpus": 4, "max_concurrent_jobs": 3})
    assert response.status_code == 200, response.json()
    cast.alpha.refresh_from_db()
    assert (cast.alpha.max_gpus, cast.alpha.max_concurrent_jobs) == (4, 3)
    event = AuditEvent.objects.get(action="project.updated")
    assert event.detail["changes"]["max_gpus"] == [None, 4]


def test_a_project_cannot_be_renamed(cast, api):
    response = api(cast.alice).patch(f"/api/v1/projects/{cast.alpha.pk}/", {"name": "other"})
    assert response.status_code == 400
    assert "renamed" in response.json()["name"][0]


def test_viewers_list_members_but_only_admins_manage_them(cast, api):
    url = f"/api/v1/projects/{cast.alpha.pk}/members/"
    listed = api(cast.carol).get(url)
    assert listed.status_code == 200
    assert {(m["username"], m["role"]) for m in listed.json()["results"]} == {
        ("alice", "admin"),
        ("bob", "member"),
        ("carol", "viewer"),
    }
    for user in (cast.bob, cast.carol):
        assert api(user).post(url, {"username": "dave", "role": "viewer"}).status_code == 403
        assert api(user).patch(f"{url}carol/", {"role": "admin"}).status_code == 403
        assert api(user).delete(f"{url}carol/").status_code == 403
    assert not Membership.objects.filter(project=cast.alpha, user=cast.dave).exists()

    alice = api(cast.alice)
    added = alice.post(url, {"username": "dave", "role": "viewer"})
    assert added.status_code == 201, added.json()
    assert alice.patch(f"{url}dave/", {"role": "member"}).json()["role"] == "member"
    assert alice.delete(f"{url}dave/").status_code == 204
    actions = list(
        AuditEvent.objects.filter(project=cast.alpha)
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == ["member.added", "member.role_changed", "member.removed"]


def test_adding_an_unknown_user_or_a_member_twice_says_what_is_wrong(cast, api):
    url = f"/api/v1/projects/{cast.alpha.pk}/members/"
    alice = api(cast.alice)
    unknown = alice.post(url, {"username": "zed"})
    assert unknown.status_code == 404  # a reference to nothing, as a URL to nothing
    assert "no user named 'zed'" in unknown.json()["username"][0]
    assert "no user named 'zed'" in unknown.json()["detail"]
    twice = alice.post(url, {"username": "bob"})
    assert twice.status_code == 409
    assert "member already" in twice.json()["detail"]
    bad_role = alice.post(url, {"username": "dave", "role": "owner"})
    assert bad_role.status_code == 400
    assert "role" in bad_role.json()


def test_a_project_keeps_its_last_admin(cast, api):
    url = f"/api/v1/projects/{cast.alpha.pk}/members/alice/"
    alice = api(cast.alice)
    demoted = alice.patch(url, {"role": "member"})
    assert demoted.status_code == 409
    assert "last admin" in demoted.json()["detail"]
    assert alice.delete(url).status_code == 409
    assert Membership.objects.get(project=cast.alpha, user=cast.alice).role == Role.ADMIN


def test_what_was_read_can_be_sent_back_with_a_change(cast, api):
    alice = api(cast.alice)
    url = f"/api/v1/projects/{cast.alpha.pk}/"
    project = alice.get(url).json()
    project["max_concurrent_jobs"] = 5
    response = alice.put(url, project)
    assert response.status_code == 200, response.json()
    assert response.json()["max_concurrent_jobs"] == 5
