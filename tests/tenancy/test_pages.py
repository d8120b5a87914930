"""Projects and tokens in the browser: members and roles, quotas, usage over a range,
the audit log for admins, and API tokens created (secret shown once) and revoked. The
forms answer with the API's messages and roles; another project is a 404."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from controlplane.tenancy.models import ApiToken, Membership
from controlplane.tenancy.services import authenticate_token
from controlplane.usage import project_usage
from jobs.models import Job
from tests.conftest import add_host

pytestmark = pytest.mark.django_db


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_an_admin_manages_members_and_quotas_and_others_cannot(cast):
    alice = login(cast.alice)
    page = alice.get(f"/projects/{cast.alpha.pk}/").content.decode()
    assert 'id="add-member"' in page and 'id="quotas"' in page and 'id="audit"' in page
    url = f"/projects/{cast.alpha.pk}/members/"
    alice.post(url, {"username": "dave", "role": "viewer"})
    assert Membership.objects.get(project=cast.alpha, user=cast.dave).role == "viewer"
    nobody = alice.post(url, {"username": "zed", "role": "member"}, follow=True)
    assert "There is no user named" in nobody.content.decode()
    alice.post(url, {"change": "dave", "role": "member"})
    assert Membership.objects.get(project=cast.alpha, user=cast.dave).role == "member"
    last = alice.post(url, {"change": "alice", "role": "viewer"}, follow=True).content.decode()
    assert "last admin" in last and Membership.objects.get(user=cast.alice).role == "admin"
    alice.post(url, {"remove": "dave"})
    assert not Membership.objects.filter(project=cast.alpha, user=cast.dave).exists()
    quotas = f"/projects/{cast.alpha.pk}/quotas/"
    bad = alice.post(quotas, {"max_gpus": "-3"}, follow=True).content.decode()
    assert "max_gpus" in bad and "greater than or equal to 0" in bad
    alice.post(quotas, {"max_gpus": "4", "max_concurrent_jobs": ""})
    cast.alpha.refresh_from_db()
    assert (cast.alpha.max_gpus, cast.alpha.max_concurrent_jobs) == (4, None)
    bob = login(cast.bob)  # a member: reads, no forms, 403 on a post
    page = bob.get(f"/projects/{cast.alpha.pk}/").content.decode()
    assert 'id="add-member"' not in page and 'id="audit"' not in page
    assert bob.post(url, {"username": "carol", "role": "admin"}).status_code == 403
    assert bob.post(quotas, {"max_gpus": "99"}).status_code == 403
    assert login(cast.dave).get(f"/projects/{cast.alpha.pk}/").status_code == 404
    assert "alpha" not in login(cast.dave).get("/projects/").content.decode()


def test_usage_counts_device_hours_per_day_in_the_range(cast, submit):
    add_host("gpu-a", gpus=2, cpu_slots=2)
    now = timezone.now().replace(hour=12, minute=0, second=0, microsecond=0)
    gpu = submit(name="g", resources={"gpus_per_node": 2})
    cpu = submit(name="c", resources={"procs_per_node": 2})
    Job.objects.filter(pk=gpu.pk).update(
        state="SUCCEEDED", started_at=now - timedelta(hours=3), finished_at=now - timedelta(hours=1)
    )
    Job.objects.filter(pk=cpu.pk).update(
        state="RUNNING", started_at=now - timedelta(days=1, hours=1), finished_at=None
    )
    usage = project_usage(cast.alpha, 7, now=now)
    assert usage["gpu_hours"] == pytest.approx(4.0)  # 2 h x 2 GPUs
    assert usage["cpu_hours"] == pytest.approx(2 * 25.0)  # 25 h x 2 slots, still running
    assert sum(d["cpu_hours"] for d in usage["daily"]) == pytest.approx(50.0)
    assert usage["daily"][-1]["gpu_hours"] == pytest.approx(4.0) and len(usage["daily"]) == 7
    assert usage["jobs_by_state"] == {"SUCCEEDED": 1, "RUNNING": 1}
    bob = login(cast.bob)

    def chosen(query: str) -> tuple[str, int]:
        """The range the picker marks and how many days the usage chart has."""
        page = bob.get(f"/projects/{cast.alpha.pk}/{query}").content.decode()
        on = re.search(r'data-range="(\w+)"[^>]*class="on"', page).group(1)
        daily = json.loads(page.split('id="usage-daily" type="application/json">')[1].split("<")[0])
        return on, len(daily)

    assert chosen("?range=30d") == ("30d", 30)
    assert chosen("?days=1") == ("24h", 1)  # links from before the shared picker
    assert chosen("?range=forever") == ("7d", 7) and chosen("") == ("7d", 7)


def test_a_token_is_shown_once_then_works_and_revoking_stops_it(cast):
    bob = login(cast.bob)
    bad = bob.post("/tokens/", {"name": "ci", "expires_in_days": "0"})
    assert bad.status_code == 400 and ApiToken.objects.count() == 0
    posted = bob.post("/tokens/", {"name": "ci", "expires_in_days": "30"})
    assert posted.status_code == 302  # so a reload does not post (and make) another
    made = bob.get(posted["Location"])
    html = made.content.decode()
    secret = html.split('id="token-secret">')[1].split("<")[0]
    assert made["Cache-Control"] == "no-store" and secret.startswith("cp_")
    assert authenticate_token(secret).user == cast.bob
    again = bob.get("/tokens/").content.decode()
    assert secret not in again and "ci" in again  # listed, never shown again
    assert ApiToken.objects.count() == 1
    token = ApiToken.objects.get()
    assert login(cast.dave).post(f"/tokens/{token.pk}/revoke/").status_code == 404
    bob.post(f"/tokens/{token.pk}/revoke/")
    token.refresh_from_db()
    assert token.revoked_at is not None
    with pytest.raises(Exception, match="revoked"):
        authenticate_token(secret)
