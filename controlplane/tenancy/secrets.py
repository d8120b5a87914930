"""Project secrets: set and delete (project admins), names for every member, values only
for the worker that starts one of the project's jobs.

Values are encrypted with Fernet (the ``cryptography`` package) under a key derived from
``CP_SECRETS_KEY`` (set the same on every web and worker host) or, on a single machine,
from ``var/secrets_key`` (generated, mode 0600). The database alone reveals nothing.
"""

from __future__ import annotations

import base64
import hashlib
import re

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from controlplane.tenancy.errors import Conflict
from controlplane.tenancy.models import Project, ProjectSecret, Role
from controlplane.tenancy.services import Actor, record, require_role

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_VALUE_BYTES = 64 * 1024


class SecretError(ValueError):
    """A secret a job refers to cannot be given to it."""


def _fernet() -> Fernet:
    digest = hashlib.sha256(settings.SECRETS_KEY.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal(text: str) -> str:
    """``text`` encrypted under the secrets key, for a value that must pass through the
    database on its way (a new API token's secret held in the session for one page)."""
    return _fernet().encrypt(text.encode()).decode()


def unseal(sealed: str, max_age: int) -> str | None:
    """What ``seal`` sealed at most ``max_age`` seconds ago, or None."""
    try:
        return _fernet().decrypt(sealed.encode(), ttl=max_age).decode()
    except InvalidToken:
        return None


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise SecretError(
            f"{name!r} is not a secret name: letters, digits, '.', '_' or '-', at most 63."
        )
    return name


@transaction.atomic
def set_secret(actor: Actor, project: Project, name: str, value: str) -> ProjectSecret:
    """Create or replace a secret (project admins). The audit event has its name only."""
    require_role(actor, project, Role.ADMIN)
    check_name(name)
    data = value.encode()
    if not data or len(data) > MAX_VALUE_BYTES:
        raise Conflict(f"A secret's value must be 1 to {MAX_VALUE_BYTES} bytes.", "value")
    now = timezone.now()
    ciphertext = _fernet().encrypt(data)
    secret, created = ProjectSecret.objects.update_or_create(
        project=project,
        name=name,
        defaults={"ciphertext": ciphertext, "updated_at": now},
        create_defaults={
            "ciphertext": ciphertext,
            "created_by": actor.user,
            "created_at": now,
            "updated_at": now,
        },
    )
    record(
        actor,
        "secret.created" if created else "secret.updated",
        secret,
        project=project,
        detail={"name": name},
    )
    return secret


@transaction.atomic
def delete_secret(actor: Actor, secret: ProjectSecret) -> None:
    require_role(actor, secret.project, Role.ADMIN)
    record(actor, "secret.deleted", secret, project=secret.project, detail={"name": secret.name})
    secret.delete()


def missing(project_id: int, names: set[str]) -> list[str]:
    """Which of ``names`` the project has no secret for."""
    have = set(
        ProjectSecret.objects.filter(project_id=project_id, name__in=names).values_list(
            "name", flat=True
        )
    )
    return sorted(names - have)


def reveal(project_id: int, names: set[str]) -> dict[str, str]:
    """The values, for the environment of one of the project's jobs (the worker only)."""
    found = {
        name: bytes(ciphertext)
        for name, ciphertext in ProjectSecret.objects.filter(
            project_id=project_id, name__in=names
        ).values_list("name", "ciphertext")
    }
    if absent := sorted(set(names) - set(found)):
        raise SecretError(f"the project has no secret named {', '.join(absent)} (any more)")
    try:
        return {name: _fernet().decrypt(blob).decode() for name, blob in found.items()}
    except InvalidToken:
        raise SecretError(
            "a secret cannot be decrypted with this host's key: set the same CP_SECRETS_KEY "
            "on every web and worker host"
        ) from None
