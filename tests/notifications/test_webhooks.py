"""Webhooks (issue 14): a real local HTTP receiver gets signed deliveries of job state
changes, retried with backoff until it answers; roles, bad input and private addresses."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import transaction

from controlplane.notifications import tasks
from controlplane.notifications.models import Delivery, Webhook
from jobs.models import Job
from jobs.states import JobState
from tests.conftest import add_host

pytestmark = pytest.mark.django_db


class Receiver:
    """An HTTP server on loopback that fails the first ``failures`` requests."""

    def __init__(self, failures: int = 0) -> None:
        self.failures, self.got = failures, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append((dict(self.headers), body))
                code = 500 if len(outer.got) <= outer.failures else 200
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hooks(settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True  # the receiver is on loopback
    settings.WEBHOOK_RETRY_SECONDS = 0
    settings.WEBHOOK_TRIES = 4
    made = []
    yield lambda failures=0: made.append(Receiver(failures)) or made[-1]
    for receiver in made:
        receiver.close()


def finish(job: Job, state: str, capture) -> list[int]:
    """Move ``job`` to ``state`` as the lifecycle does; the deliveries its commit queued."""
    before = set(Delivery.objects.values_list("pk", flat=True))
    with capture(execute=True), transaction.atomic():
        fresh = Job.objects.select_for_update().get(pk=job.pk)
        if state == JobState.SUCCEEDED:  # PENDING -> SCHEDULED -> RUNNING -> SUCCEEDED
            for step in (JobState.SCHEDULED, JobState.RUNNING):
                fresh.save(update_fields=fresh.move_to(step))
        fresh.save(update_fields=fresh.move_to(state, reason="the test ended it"))
    return sorted(set(Delivery.objects.values_list("pk", flat=True)) - before)


def test_a_signed_delivery_is_retried_until_the_receiver_answers(
    cast, api, submit, hooks, django_capture_on_commit_callbacks
):
    add_host("cpu-1", cpu_slots=2)
    receiver = hooks(failures=2)
    alice = api(cast.alice)  # alpha's admin
    base = f"/api/v1/projects/{cast.alpha.pk}/webhooks/"
    made = alice.post(base, {"name": "ci", "url": receiver.url,
                             "events": ["job.succeeded", "job.failed"]}, format="json")  # fmt: skip
    assert made.status_code == 201, made.json()
    secret = made.json()["secret"]
    assert secret.startswith("whsec_") and "secret" not in alice.get(base).json()["results"][0]
    assert secret.encode() not in bytes(Webhook.objects.get().secret_ciphertext)

    job = submit(name="notify-me", resources={"procs_per_node": 1})
    [delivery_id] = finish(job, JobState.SUCCEEDED, django_capture_on_commit_callbacks)
    assert tasks.deliver.apply(args=[delivery_id]).get() == "delivered"
    assert len(receiver.got) == 3  # two 500s, then 200
    headers, body = receiver.got[-1]
    assert headers["X-CP-Event"] == "job.succeeded"
    stamp, mac = (part.split("=", 1)[1] for part in headers["X-CP-Signature"].split(","))
    expected = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(mac, expected)  # what a receiver checks
    payload = json.loads(body)
    assert payload["job"]["id"] == job.pk and payload["job"]["state"] == "SUCCEEDED"
    assert payload["project"] == "alpha" and payload["delivery"] == delivery_id
    delivery = Delivery.objects.get(pk=delivery_id)
    assert (delivery.state, delivery.attempts, delivery.response_status) == ("DELIVERED", 3, 200)

    log = alice.get(f"{base}{made.json()['id']}/deliveries/").json()
    assert [(d["event"], d["state"], d["attempts"]) for d in log] == [
        ("job.succeeded", "DELIVERED", 3)
    ]
    # Not asked for: no delivery. Another project's job: not this project's webhooks.
    other = submit(name="quiet", resources={"procs_per_node": 1})
    assert finish(other, JobState.CANCELLED, django_capture_on_commit_callbacks) == []


def test_a_receiver_that_never_answers_is_given_up_on_and_slack_gets_text(
    cast, api, submit, hooks, django_capture_on_commit_callbacks
):
    add_host("cpu-1", cpu_slots=2)
    receiver = hooks(failures=99)
    made = api(cast.alice).post(
        f"/api/v1/projects/{cast.alpha.pk}/webhooks/",
        {"name": "chat", "url": receiver.url, "events": ["job.failed"], "payload_format": "slack"},
        format="json",
    )
    assert made.status_code == 201
    job = submit(name="doomed", resources={"procs_per_node": 1})
    [delivery_id] = finish(job, JobState.FAILED, django_capture_on_commit_callbacks)
    assert tasks.deliver.apply(args=[delivery_id]).get() == "failed after 4 tries"
    delivery = Delivery.objects.get(pk=delivery_id)
    assert (delivery.state, delivery.attempts, delivery.last_error) == ("FAILED", 4, "answered 500")
    text = json.loads(receiver.got[0][1])["text"]
    assert text == f"Job #{job.pk} doomed (alpha): failed — the test ended it"


def test_only_project_admins_manage_webhooks_and_bad_input_is_a_400(cast, api, settings):
    base = f"/api/v1/projects/{cast.alpha.pk}/webhooks/"
    good = {"name": "ok", "url": "https://hooks.example.com/x", "events": ["job.failed"]}
    assert api(cast.bob).post(base, good, format="json").status_code == 403  # a member
    assert api(cast.bob).get(base).status_code == 403
    assert api(cast.dave).post(base, good, format="json").status_code == 404  # not in alpha
    alice = api(cast.alice)
    for bad, field in (({**good, "url": "ftp://x.example.com/"}, "url"),
                       ({**good, "url": "http://127.0.0.1:6379/"}, "url"),
                       ({**good, "url": "http://user:pw@hooks.example.com/"}, "url"),
                       ({**good, "events": ["job.exploded"]}, "events"),
                       ({**good, "events": []}, "events"),
                       ({**good, "name": "a b"}, "name")):  # fmt: skip
        refused = alice.post(base, bad, format="json")
        assert refused.status_code == 400 and field in refused.json(), (bad, refused.json())
    assert Webhook.objects.count() == 0
    made = alice.post(base, good, format="json").json()
    assert alice.post(base, good, format="json").status_code == 409  # the same name
    assert api(cast.dave).delete(f"{base}{made['id']}/").status_code == 404
    assert alice.delete(f"{base}{made['id']}/").status_code == 204


def test_a_name_that_resolves_to_loopback_is_not_sent_to(cast, api, submit, settings):
    from controlplane.notifications import services
    from controlplane.tenancy.services import Actor

    settings.WEBHOOK_TRIES = 1
    webhook, _ = services.create_webhook(
        Actor(user=cast.alice), cast.alpha, "sneaky", "http://localhost:6379/", ["job.failed"],
        "json",
    )  # fmt: skip
    delivery = Delivery.objects.create(webhook=webhook, event="ping", payload={"event": "ping"})
    assert tasks.deliver.apply(args=[delivery.pk]).get() == "failed after 1 tries"
    delivery.refresh_from_db()
    assert delivery.state == "FAILED" and "not a public address" in delivery.last_error


def test_the_project_page_adds_shows_once_and_deletes_a_webhook(cast):
    from django.test import Client

    admin, member = Client(), Client()
    admin.force_login(cast.alice)
    member.force_login(cast.bob)
    url = f"/projects/{cast.alpha.pk}/webhooks/"
    form = {"name": "paged", "url": "https://hooks.example.com/x", "events": ["job.failed"]}
    assert member.post(url, form).status_code == 403
    assert "add-webhook" not in member.get(f"/projects/{cast.alpha.pk}/").content.decode()
    made = admin.post(url, form)
    assert made.status_code == 302 and made["Location"].endswith("#webhooks")
    page = admin.get(f"/projects/{cast.alpha.pk}/").content.decode()
    secret = page.split('id="webhook-secret">')[1].split("<")[0]
    assert secret.startswith("whsec_") and 'data-webhook="paged"' in page
    assert secret not in admin.get(f"/projects/{cast.alpha.pk}/").content.decode()  # once
    bad = admin.post(url, {**form, "name": "again", "url": "gopher://x"}, follow=True)
    shown = bad.content.decode()
    assert "Webhook:" in shown and "Use an http:// or https:// URL" in shown
    webhook = Webhook.objects.get(name="paged")
    admin.post(url, {"delete": webhook.pk})
    assert not Webhook.objects.filter(pk=webhook.pk).exists()


def test_a_delivery_whose_task_was_lost_is_sent_by_the_resend_sweep(cast, hooks):
    from datetime import timedelta

    from django.utils import timezone

    from controlplane.notifications import services
    from controlplane.tenancy.services import Actor

    receiver = hooks()
    webhook, _ = services.create_webhook(
        Actor(user=cast.alice), cast.alpha, "late", receiver.url, ["job.failed"], "json"
    )
    lost = Delivery.objects.create(webhook=webhook, event="ping", payload={"event": "ping"})
    fresh = Delivery.objects.create(webhook=webhook, event="ping", payload={"event": "ping"})
    Delivery.objects.filter(pk=lost.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    sent = services.resend_stuck(send=lambda pk: tasks.deliver.apply(args=[pk]))
    assert sent == [lost.pk] and len(receiver.got) == 1  # the fresh one's task may yet run
    lost.refresh_from_db()
    assert lost.state == "DELIVERED" and fresh.attempts == 0
    assert services.resend_stuck(send=lambda pk: None) == []  # delivered: not again
