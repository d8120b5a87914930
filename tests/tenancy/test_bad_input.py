"""Bad input gets a 4xx with a readable message and changes nothing; never a 500."""

from __future__ import annotations

import json
import re

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from controlplane.tenancy.models import AuditEvent, Project

pytestmark = pytest.mark.django_db


def raw_post(client: APIClient, path: str, body: bytes | str, method: str = "post"):
    return client.generic(method.upper(), path, body, content_type="application/json")


def test_malformed_json_is_a_400_naming_the_problem(cast, api):
    response = raw_post(api(cast.olga), "/api/v1/projects/", b'{"name": "x",')
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]
    response = raw_post(api(cast.olga), "/api/v1/projects/", b"\xff\xfe")
    assert response.status_code == 400
    empty = raw_post(api(cast.olga), "/api/v1/projects/", b"")
    assert empty.status_code == 400 and "required" in empty.json()["name"][0]


def test_a_body_that_is_not_an_object_is_a_400(cast, api):
    response = raw_post(api(cast.olga), "/api/v1/projects/", b'["gamma"]')
    assert response.status_code == 400
    assert "Expected a dictionary" in json.dumps(response.json())


def test_wrong_types_name_the_field(cast, api):
    olga = api(cast.olga)
    cases = [
        ({"name": "g1", "max_gpus": "lots"}, "max_gpus"),
        ({"name": "g2", "max_gpus": -1}, "max_gpus"),
        ({"name": "g3", "max_gpus": 10**12}, "max_gpus"),
        ({"name": "g4", "max_concurrent_jobs": 1.5}, "max_concurrent_jobs"),
        ({"name": ["x"]}, "name"),
        ({"name": "has space"}, "name"),
        ({"name": "x" * 64}, "name"),
        ({"name": "g5", "description": {"a": 1}}, "description"),
    ]
    for body, field in cases:
        response = olga.post("/api/v1/projects/", body)
        assert response.status_code == 400, (body, response.json())
        assert field in response.json(), (body, response.json())
    assert not Project.objects.filter(name__startswith="g").exists()


def test_unknown_fields_are_refused_not_ignored(cast, api):
    response = api(cast.olga).post("/api/v1/projects/", {"name": "gamma", "max_gpu": 4})
    assert response.status_code == 400
    assert "Unknown field" in response.json()["max_gpu"][0]
    assert not Project.objects.filter(name="gamma").exists()
    response = api(cast.alice).patch(f"/api/v1/projects/{cast.alpha.pk}/", {"owner": "me"})
    assert response.status_code == 400 and "owner" in response.json()


@override_settings(API_MAX_BODY_BYTES=2048)
def test_an_oversized_body_is_a_413(cast, api):
    body = json.dumps({"name": "big", "description": "x" * 4000})
    response = raw_post(api(cast.olga), "/api/v1/projects/", body)
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]
    assert not Project.objects.filter(name="big").exists()


def test_garbage_at_every_route_never_gives_a_500(cast, api):
    client = api(cast.olga)
    schema = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    bodies = [b"{", b"null", b"[]", b'"text"', b"123", b'{"id": "x", "name": null}', b"{}"]
    missing = ["0", "99999999999999999999", "abc", "%00"]
    events_before = AuditEvent.objects.count()
    for path, methods in schema.json()["paths"].items():
        for method in methods:
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            for ident in missing:
                concrete = re.sub(r"\{[^}]+\}", ident, path)
                for body in bodies if method != "get" else [b""]:
                    response = client.generic(
                        method.upper(), concrete, body, content_type="application/json"
                    )
                    assert response.status_code < 500, (method, concrete, body)
    # Garbage sent to objects that do exist.
    for path in (
        f"/api/v1/projects/{cast.alpha.pk}/",
        f"/api/v1/projects/{cast.alpha.pk}/members/",
    ):
        for method in ("post", "put", "patch"):
            for body in bodies[:-1]:
                response = client.generic(
                    method.upper(), path, body, content_type="application/json"
                )
                assert response.status_code < 500, (method, path, body)
    # Nothing was created or changed by all that.
    assert AuditEvent.objects.count() == events_before
    assert list(Project.objects.values_list("name", flat=True)) == ["alpha", "beta"]
