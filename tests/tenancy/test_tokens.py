"""API tokens: shown once, stored hashed, expiring, revocable, and scoped to their owner."""

from __future__ import annotations

import hashlib
import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from controlplane.tenancy.models import ApiToken, AuditEvent

pytestmark = pytest.mark.django_db


def bearer(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def test_a_new_token_is_shown_once_and_stored_only_as_a_digest(cast, api):
    alice = APIClient()
    alice.force_login(cast.alice)  # the browser's session creates the first token
    created = alice.post("/api/v1/tokens/", {"name": "laptop", "expires_in_days": 30})
    assert created.status_code == 201, created.json()
    raw = created.json()["token"]
    row = ApiToken.objects.get(pk=created.json()["id"])
    assert row.digest == hashlib.sha256(raw.encode()).hexdigest()
    assert raw not in {row.digest, row.prefix, row.name}
    assert raw.startswith(row.prefix)
    assert timedelta(days=29) < row.expires_at - timezone.now() <= timedelta(days=30)

    listed = alice.get("/api/v1/tokens/").json()["results"]
    assert [t["name"] for t in listed] == ["laptop"]
    assert "token" not in listed[0]
    assert alice.get(f"/api/v1/tokens/{row.pk}/").json().get("token") is None


def test_a_token_works_until_it_is_revoked(cast):
    alice = APIClient()
    alice.force_login(cast.alice)
    created = alice.post("/api/v1/tokens/", {"name": "ci"}).json()
    client = bearer(created["token"])
    assert client.get("/api/v1/projects/").status_code == 200
    row = ApiToken.objects.get(pk=created["id"])
    assert row.last_used_at is not None and row.last_used_ip == "127.0.0.1"

    assert client.delete(f"/api/v1/tokens/{created['id']}/").status_code == 204
    refused = client.get("/api/v1/projects/")
    assert refused.status_code == 401
    assert "revoked" in refused.json()["detail"]
    assert refused["WWW-Authenticate"].startswith("Bearer")
    assert AuditEvent.objects.filter(action="token.revoked", object_id=str(row.pk)).exists()


def test_an_expired_token_is_refused_with_the_reason(cast):
    alice = APIClient()
    alice.force_login(cast.alice)
    created = alice.post("/api/v1/tokens/", {"name": "short", "expires_in_days": 1}).json()
    client = bearer(created["token"])
    assert client.get("/api/v1/projects/").status_code == 200
    ApiToken.objects.filter(pk=created["id"]).update(expires_at=timezone.now())
    refused = client.get("/api/v1/projects/")
    assert refused.status_code == 401
    assert "expired" in refused.json()["detail"]


def test_tokens_of_other_users_are_invisible(cast, api):
    bob_token = APIClient()
    bob_token.force_login(cast.bob)
    bobs = bob_token.post("/api/v1/tokens/", {"name": "bob's"}).json()
    dave = api(cast.dave)
    assert dave.get(f"/api/v1/tokens/{bobs['id']}/").status_code == 404
    assert dave.delete(f"/api/v1/tokens/{bobs['id']}/").status_code == 404
    assert ApiToken.objects.get(pk=bobs["id"]).revoked_at is None
    assert bobs["id"] not in [t["id"] for t in dave.get("/api/v1/tokens/").json()["results"]]


def test_a_token_for_an_inactive_user_is_refused(cast, api):
    client = api(cast.bob)
    cast.bob.is_active = False
    cast.bob.save()
    response = client.get("/api/v1/projects/")
    assert response.status_code == 401
    assert "inactive" in response.json()["detail"]


def test_operators_mint_tokens_from_the_shell(cast):
    out = io.StringIO()
    call_command("create_token", "carol", "--name", "ops", stdout=out)
    raw = out.getvalue().strip()
    response = bearer(raw).get("/api/v1/projects/")
    assert response.status_code == 200
    assert [p["name"] for p in response.json()["results"]] == ["alpha"]
    assert ApiToken.objects.get(user=cast.carol).name == "ops"
    with pytest.raises(CommandError, match="no user named 'nobody'"):
        call_command("create_token", "nobody")


def test_token_requests_are_validated(cast, api):
    alice = api(cast.alice)
    past = (timezone.now() - timedelta(days=1)).isoformat()
    cases = [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "t", "expires_in_days": 0}, "expires_in_days"),
        ({"name": "t", "expires_in_days": "soon"}, "expires_in_days"),
        ({"name": "t", "expires_at": past}, "expires_at"),
        ({"name": "t", "expires_at": "tomorrow"}, "expires_at"),
        ({"name": "t", "expires_in_days": 3, "expires_at": past}, "expires_in_days"),
    ]
    before = ApiToken.objects.count()
    for body, field in cases:
        response = alice.post("/api/v1/tokens/", body)
        assert response.status_code == 400, (body, response.json())
        assert field in response.json(), (body, response.json())
    assert ApiToken.objects.count() == before
