"""Authentication and authorization across the whole API."""

from __future__ import annotations

import re

import pytest
from rest_framework import mixins, serializers
from rest_framework.test import APIClient, APIRequestFactory, force_authenticate

from controlplane.tenancy.api.base import ProjectScopedViewSet
from controlplane.tenancy.models import Membership
from controlplane.tenancy.services import TOKEN_PREFIX

pytestmark = pytest.mark.django_db


def schema_operations() -> list[tuple[str, str]]:
    schema = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    operations = []
    for path, methods in schema.json()["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "1", path)
        operations += [
            (m.upper(), concrete) for m in methods if m in ("get", "post", "put", "patch", "delete")
        ]
    return operations


def test_the_schema_lists_the_api(db):
    paths = {path for _, path in schema_operations()}
    assert {"/api/v1/projects/", "/api/v1/projects/1/members/", "/api/v1/tokens/"} <= paths
    assert {"/api/v1/workers/", "/api/v1/gpus/"} <= paths


def test_anonymous_requests_to_every_api_route_are_refused(db):
    client = APIClient()
    operations = schema_operations()
    assert len(operations) >= 15
    for method, path in operations:
        response = client.generic(method, path, data="{}", content_type="application/json")
        assert response.status_code in (401, 403), (method, path, response.status_code)
        if response.status_code == 401:
            assert response["WWW-Authenticate"].startswith("Bearer")


def test_bad_tokens_get_a_401_that_says_why(cast):
    cases = {
        "Bearer nope": "not a token this server issued",
        f"Bearer {TOKEN_PREFIX}deadbeef_forged": "no such token",
        "Bearer": "Malformed",
        "Bearer a b": "Malformed",
    }
    for header, reason in cases.items():
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=header)
        response = client.get("/api/v1/projects/")
        assert response.status_code == 401, header
        assert reason in response.json()["detail"], (header, response.json())


def test_session_auth_needs_a_csrf_token_for_writes(cast):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(cast.olga)
    assert client.get("/api/v1/projects/").status_code == 200
    response = client.post("/api/v1/projects/", {"name": "csrf"})
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]


class ProbeSerializer(serializers.ModelSerializer):
    class Meta:
        model = Membership
        fields = ["id", "role"]


class MembershipProbe(mixins.ListModelMixin, mixins.UpdateModelMixin, ProjectScopedViewSet):
    """A minimal project-owned endpoint, to test the shared base class's rules."""

    queryset = Membership.objects.all()
    serializer_class = ProbeSerializer

    def perform_update(self, serializer):  # the write itself is not under test
        pass


def probe(user, method: str, pk: int):
    factory = APIRequestFactory()
    request = getattr(factory, method)(f"/probe/{pk}/", {"role": "viewer"}, format="json")
    force_authenticate(request, user=user)
    view = MembershipProbe.as_view({"get": "list", "patch": "partial_update"})
    return view(request, pk=pk)


def test_the_base_class_lets_viewers_read_and_members_write(cast):
    target = Membership.objects.get(user=cast.carol).pk
    assert probe(cast.carol, "patch", target).status_code == 403
    assert probe(cast.bob, "patch", target).status_code == 200
    assert probe(cast.alice, "patch", target).status_code == 200
    assert probe(cast.dave, "patch", target).status_code == 404
    seen = {m["id"] for m in probe(cast.carol, "get", 0).data["results"]}
    assert seen == set(Membership.objects.filter(project=cast.alpha).values_list("id", flat=True))
    assert {m["id"] for m in probe(cast.dave, "get", 0).data["results"]} == set(
        Membership.objects.filter(project=cast.beta).values_list("id", flat=True)
    )


@pytest.mark.parametrize(
    ("peer", "forwarded", "behind", "expected"),
    [
        ("203.0.113.9", "", False, "203.0.113.9"),
        # Without CP_BEHIND_PROXY the header is the client's own words: ignored.
        ("203.0.113.9", "127.0.0.1", False, "203.0.113.9"),
        # Behind the proxy: the right-most hop it did not write itself.
        ("127.0.0.1", "203.0.113.9", True, "203.0.113.9"),
        ("127.0.0.1", "127.0.0.1, 203.0.113.9", True, "203.0.113.9"),
        ("127.0.0.1", "198.51.100.1, 203.0.113.9, 127.0.0.1", True, "203.0.113.9"),
        # Not an address: never recorded; trust stops at the proxy that passed it on.
        ("127.0.0.1", "not-an-ip", True, "127.0.0.1"),
        ("127.0.0.1", "203.0.113.9, not-an-ip", True, "127.0.0.1"),
        # A connection from outside the trusted proxies: its header is not believed.
        ("198.51.100.7", "127.0.0.1", True, "198.51.100.7"),
    ],
)
def test_the_client_address_behind_a_proxy_is_the_rightmost_untrusted_hop(
    settings, peer, forwarded, behind, expected
):
    from django.test import RequestFactory

    from controlplane.tenancy.auth import client_ip

    settings.BEHIND_PROXY = behind
    request = RequestFactory().get("/", REMOTE_ADDR=peer, HTTP_X_FORWARDED_FOR=forwarded)
    assert client_ip(request) == expected


def test_metrics_stay_closed_to_a_spoofed_loopback_hop(settings, client):
    settings.BEHIND_PROXY = True
    settings.METRICS_TOKEN = ""
    response = client.get(
        "/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="127.0.0.1, 203.0.113.9"
    )
    assert response.status_code == 403
