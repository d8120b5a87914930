"""The API keeps the contract its OpenAPI schema states: errors documented, bodies closed,
types as declared, PATCH partial, JSON (never an HTML page) under /api/."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def schema() -> dict:
    response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return response.json()


def test_every_operation_documents_its_errors_and_request_bodies_are_closed():
    document = schema()
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            codes = set(operation["responses"])
            assert {"400", "401", "403", "429", "503"} <= codes, (method, path, codes)
            if "{" in path:
                assert "404" in codes, (method, path)
            if method in ("post", "put", "patch"):
                assert {"409", "413"} <= codes, (method, path)
    components = document["components"]["schemas"]
    assert "Error" in components
    closed = [n for n, c in components.items() if n.endswith("Request") and c["type"] == "object"]
    assert closed and all(components[n]["additionalProperties"] is False for n in closed)
    [page_size] = [
        p for p in document["paths"]["/api/v1/projects/"]["get"]["parameters"]
        if p["name"] == "page_size"
    ]  # fmt: skip
    assert (page_size["schema"]["minimum"], page_size["schema"]["maximum"]) == (1, 1000)


def test_a_json_value_of_the_wrong_type_is_refused_not_converted(cast, api):
    olga = api(cast.olga)
    for body, field in (
        ({"name": "typed", "description": 5}, "description"),
        ({"name": "typed", "max_gpus": "4"}, "max_gpus"),
        ({"name": "typed", "max_gpus": True}, "max_gpus"),
    ):
        response = olga.post("/api/v1/projects/", body, format="json")
        assert response.status_code == 400, (body, response.content)
        assert "Must be" in response.json()[field][0]
    assert (
        olga.post("/api/v1/projects/", {"name": "typed", "max_gpus": 4}, format="json").status_code
        == 201
    )
    blank = olga.post("/api/v1/models/", {"name": "m", "project": ""}, format="json")
    assert blank.status_code == 400 and "project" in blank.json()


def test_patch_changes_only_what_it_names(cast, api):
    alice = api(cast.alice)
    member = f"/api/v1/projects/{cast.alpha.pk}/members/bob/"
    assert alice.patch(member, {}, format="json").json()["role"] == "member"
    created = alice.post(
        "/api/v1/models/", {"name": "m", "project": "alpha", "description": "d"}, format="json"
    )
    assert created.status_code == 201, created.content
    model = f"/api/v1/models/{created.json()['id']}/"
    assert alice.patch(model, {}, format="json").json()["description"] == "d"
    assert alice.patch(model, {"description": "e"}, format="json").json()["description"] == "e"
    assert alice.put(model, {}, format="json").status_code == 400  # PUT still needs it all


def test_bad_paging_and_unknown_api_paths_answer_json(cast, api):
    olga = api(cast.olga)
    for size in ("0", "1001", "x"):
        response = olga.get("/api/v1/projects/", {"page_size": size})
        assert response.status_code == 400 and "page_size" in response.json()
    assert olga.get("/api/v1/projects/", {"page_size": "2"}).status_code == 200
    # A cookie-carrying client (the browser) without a CSRF token, to a path with no
    # operation: a JSON 404, not Django's HTML CSRF page.
    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(cast.olga)
    for method in ("get", "patch", "post"):
        response = getattr(browser, method)("/api/v1/models/0.5/")
        assert response.status_code == 404, (method, response.content[:200])
        assert response["Content-Type"] == "application/json"
        assert "No API operation" in response.json()["detail"]
    refused = browser.post("/api/v1/projects/", {"name": "x"}, format="json")
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
