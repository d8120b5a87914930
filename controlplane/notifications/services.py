"""Webhooks: made and removed by project admins; told about their project's job state
changes after the change commits; each delivery signed and retried with backoff by the
``notifications.deliver`` task, and logged.

A delivery is an HTTP POST of a JSON body (``payload_format`` "json", or Slack's
``{"text": ...}``) with these headers:

- ``X-CP-Event``: the event (``job.succeeded``, ...), ``X-CP-Delivery``: its id;
- ``X-CP-Signature: t=<unix seconds>,v1=<hex>``: HMAC-SHA256 under the webhook's secret of
  ``"<t>.<body>"``; a receiver recomputes it and rejects an old ``t`` (replays).

The URL is the admin's, but the request comes from the control plane: it is sent only to
public addresses (checked as it is sent, after DNS), never to loopback, private or
link-local ones, unless ``CP_WEBHOOK_ALLOW_PRIVATE`` is set; redirects are not followed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from controlplane.notifications.models import EVENTS, Delivery, DeliveryState, Webhook
from controlplane.tenancy import secrets as sealed
from controlplane.tenancy.errors import Conflict, ServiceError
from controlplane.tenancy.models import Project, Role
from controlplane.tenancy.services import Actor, record, require_role

MAX_WEBHOOKS = 20
log = logging.getLogger(__name__)


def _encrypt(text: str) -> bytes:
    return sealed._fernet().encrypt(text.encode())


def _decrypt(data: bytes) -> str:
    return sealed._fernet().decrypt(bytes(data)).decode()


def check_url(url: str) -> str:
    """'' if ``url`` may be a webhook's, else why not (before any DNS lookup)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "Use an http:// or https:// URL with a host."
    if parts.username or parts.password:
        return "Put no credentials in the URL: the signature authenticates the sender."
    try:
        address = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return ""
    return "" if _allowed(address) else f"{address} is not a public address."


def _allowed(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return settings.WEBHOOK_ALLOW_PRIVATE or address.is_global


def _resolve_check(url: str) -> str:
    """'' if every address ``url``'s host resolves to may be sent to, else why not."""
    parts = urlsplit(url)
    try:
        found = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        return f"cannot resolve {parts.hostname}: {exc}"
    for *_rest, sockaddr in found:
        address = ipaddress.ip_address(sockaddr[0])
        if not _allowed(address):
            return f"{parts.hostname} resolves to {address}, not a public address"
    return ""


@transaction.atomic
def create_webhook(
    actor: Actor, project: Project, name: str, url: str, events: list[str], payload_format: str
) -> tuple[Webhook, str]:
    """A new webhook and its signing secret (shown once: only its ciphertext is kept)."""
    require_role(actor, project, Role.ADMIN)
    if why := check_url(url):
        raise ServiceError(why, "url")
    unknown = sorted(set(events) - set(EVENTS))
    if unknown or not events:
        raise ServiceError(f"Events are some of {', '.join(EVENTS)}.", "events")
    if Webhook.objects.filter(project=project, name=name).exists():
        raise Conflict(f"Project {project.name} has a webhook named {name!r} already.", "name")
    if Webhook.objects.filter(project=project).count() >= MAX_WEBHOOKS:
        raise ServiceError(f"A project has at most {MAX_WEBHOOKS} webhooks.", "name")
    secret = "whsec_" + secrets.token_urlsafe(32)
    webhook = Webhook.objects.create(
        project=project, name=name, url=url, events=sorted(set(events)),
        payload_format=payload_format, secret_ciphertext=_encrypt(secret),
        created_by=actor.user,
    )  # fmt: skip
    record(actor, "webhook.created", webhook, project=project, detail={"url": url})
    return webhook, secret


def delete_webhook(actor: Actor, webhook: Webhook) -> None:
    require_role(actor, webhook.project, Role.ADMIN)
    record(actor, "webhook.deleted", webhook, project=webhook.project)
    webhook.delete()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def _job_payload(event: str, job: Any) -> dict[str, Any]:
    return {
        "event": event,
        "time": timezone.now().isoformat(),
        "project": job.project.name,
        "job": {
            "id": job.pk, "name": job.name, "state": job.state, "reason": job.reason,
            "restarts": job.restarts, "preemptions": job.preemptions,
            "progress": {k: (job.progress or {}).get(k) for k in ("step", "total")},
        },
    }  # fmt: skip


def job_event(job_id: int, event: str) -> list[int]:
    """Queue a delivery of ``event`` about job ``job_id`` to each of its project's active
    webhooks that wants it; the deliveries' ids."""
    from jobs.models import Job

    job = Job.objects.select_related("project").filter(pk=job_id).first()
    if job is None:
        return []
    return _queue(job.project_id, event, lambda: _job_payload(event, job))


def sweep_event(sweep_id: int, event: str) -> list[int]:
    """The same for a sweep's end (``sweep.succeeded``, ``.failed``, ``.cancelled``)."""
    from jobs.sweeps.models import Sweep

    sweep = Sweep.objects.select_related("project").filter(pk=sweep_id).first()
    if sweep is None:
        return []
    return _queue(sweep.project_id, event, lambda: _sweep_payload(event, sweep))


def _queue(project_id: int, event: str, payload: Any) -> list[int]:
    from controlplane.notifications import tasks

    made = []
    for webhook in Webhook.objects.filter(project_id=project_id, active=True):
        if event in webhook.events:
            delivery = Delivery.objects.create(webhook=webhook, event=event, payload=payload())
            made.append(delivery.pk)
    for pk in made:
        try:
            tasks.deliver.delay(pk)
        except Exception:  # the broker is away: the delivery stays PENDING in its log
            log.warning("could not queue webhook delivery %s", pk, exc_info=True)
    return made


def ping(actor: Actor, webhook: Webhook) -> Delivery:
    """A test delivery (event "ping"), queued now."""
    from controlplane.notifications import tasks

    require_role(actor, webhook.project, Role.ADMIN)
    payload = {"event": "ping", "time": timezone.now().isoformat(),
               "project": webhook.project.name, "webhook": webhook.name}  # fmt: skip
    delivery = Delivery.objects.create(webhook=webhook, event="ping", payload=payload)
    transaction.on_commit(lambda: tasks.deliver.delay(delivery.pk))
    return delivery


def _sweep_payload(event: str, sweep: Any) -> dict[str, Any]:
    from jobs.sweeps.services import best_trial

    best = best_trial(sweep)
    return {
        "event": event,
        "time": timezone.now().isoformat(),
        "project": sweep.project.name,
        "sweep": {
            "id": sweep.pk, "name": sweep.name, "state": sweep.state, "reason": sweep.reason,
            "trials": sweep.total, "metric": sweep.metric, "goal": sweep.goal,
            "best": None if best is None else {
                "trial": best.number, "job": best.job_id, "metric": best.metric,
                "hparams": best.hparams,
            },
        },
    }  # fmt: skip


def _body(webhook: Webhook, delivery: Delivery) -> bytes:
    payload = {**delivery.payload, "delivery": delivery.pk}
    if webhook.payload_format == "slack":
        job = payload.get("job") or payload.get("sweep") or {}
        if job:
            kind, what = payload["event"].split(".", 1)
            text = f"{kind.title()} #{job['id']} {job['name']} ({payload['project']}): {what}"
            if job["reason"]:
                text += f" — {job['reason']}"
        else:
            text = f"Webhook {payload.get('webhook')} of {payload['project']}: test delivery"
        payload = {"text": text, "cp": payload}
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def attempt(delivery_id: int) -> bool | None:
    """Send one try of a delivery: True delivered, False failed (try again), None nothing
    to do (already delivered, or its webhook is gone)."""
    delivery = Delivery.objects.select_related("webhook").filter(pk=delivery_id).first()
    if delivery is None or delivery.state == DeliveryState.DELIVERED:
        return None
    webhook = delivery.webhook
    body = _body(webhook, delivery)
    stamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "gpu-controlplane-webhooks",
        "X-CP-Event": delivery.event,
        "X-CP-Delivery": str(delivery.pk),
        "X-CP-Signature": signature(_decrypt(webhook.secret_ciphertext), stamp, body),
    }
    status, error = None, ""
    if why := _resolve_check(webhook.url):
        error = why
    else:
        try:
            response = httpx.post(
                webhook.url, content=body, headers=headers,
                timeout=settings.WEBHOOK_TIMEOUT, follow_redirects=False,
            )  # fmt: skip
            status = response.status_code
            if not 200 <= status < 300:
                error = f"answered {status}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
    delivered = status is not None and not error
    Delivery.objects.filter(pk=delivery.pk).update(
        attempts=delivery.attempts + 1,
        response_status=status,
        last_error=error[:300],
        state=DeliveryState.DELIVERED if delivered else DeliveryState.PENDING,
        delivered_at=timezone.now() if delivered else None,
    )
    return delivered


#: A delivery never tried this long after it was made lost its task (the broker was away).
RESEND_AFTER_SECONDS = 120


def resend_stuck(send: Any = None, now: Any = None) -> list[int]:
    """Queue again each delivery that was made but never tried (its task was lost); the
    ids. A receiver may see a delivery twice (rarely): ``X-CP-Delivery`` names it."""
    from datetime import timedelta

    from controlplane.notifications import tasks

    send = send or tasks.deliver.delay
    cutoff = (now or timezone.now()) - timedelta(seconds=RESEND_AFTER_SECONDS)
    stuck = list(
        Delivery.objects.filter(state=DeliveryState.PENDING, attempts=0, created_at__lt=cutoff)
        .order_by("id")
        .values_list("pk", flat=True)[:500]
    )
    for pk in stuck:
        send(pk)
    return stuck


def give_up(delivery_id: int) -> None:
    Delivery.objects.filter(pk=delivery_id, state=DeliveryState.PENDING).update(
        state=DeliveryState.FAILED
    )
