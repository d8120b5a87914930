"""Every change to projects, memberships and tokens goes through a function here.

Views, management commands and tasks call these; each writes its audit event in the same
transaction as the change it records.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, OperationalError, models, transaction
from django.utils import timezone

from controlplane.tenancy import sockets
from controlplane.tenancy.errors import Conflict, Forbidden, ServiceError
from controlplane.tenancy.models import (
    PRIORITY_CHOICES,
    ApiToken,
    AuditEvent,
    Membership,
    Project,
    Role,
    TokenState,
    role_at_least,
)

User = get_user_model()
DEFAULT_PROJECT = "default"
TOKEN_PREFIX = "cp_"  # noqa: S105 (a public marker, not a secret)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Actor:
    """Who is acting and from where; ``user`` is None for the system itself."""

    user: AbstractBaseUser | None
    ip: str | None = None
    via: str = "api"

    @classmethod
    def system(cls) -> Actor:
        return cls(user=None, via="system")

    @property
    def name(self) -> str:
        return self.user.get_username() if self.user is not None else "system"


def record(
    actor: Actor,
    action: str,
    obj: models.Model | None = None,
    *,
    project: Project | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one audit event."""
    return AuditEvent.objects.create(
        actor=actor.user if actor.user is not None and actor.user.pk else None,
        actor_name=actor.name,
        action=action,
        object_type=obj._meta.label_lower if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
        object_repr=str(obj)[:200] if obj is not None else "",
        project=project,
        ip=actor.ip,
        via=actor.via,
        detail=detail or {},
    )


# --- visibility and roles ------------------------------------------------------------------


def visible_projects(user: AbstractBaseUser) -> models.QuerySet[Project]:
    """The projects ``user`` may see: their memberships, or all of them for a superuser."""
    if not user.is_authenticated:
        return Project.objects.none()
    if user.is_superuser:
        return Project.objects.all()
    return Project.objects.filter(memberships__user=user)


def role_of(user: AbstractBaseUser, project: Project) -> str | None:
    """The user's role in the project (admin for superusers), or None."""
    if not user.is_authenticated:
        return None
    if user.is_superuser:
        return Role.ADMIN
    return (
        Membership.objects.filter(project=project, user=user).values_list("role", flat=True).first()
    )


def require_role(actor: Actor, project: Project, needed: str) -> None:
    """Raise ``Forbidden`` unless the actor holds at least ``needed`` in ``project``."""
    if actor.user is None:  # the system may do anything
        return
    role = role_of(actor.user, project)
    if not role_at_least(role, needed):
        raise Forbidden(
            f"This needs the {needed} role in project {project.name!r}; you are "
            f"{role or 'not a member'}."
        )


# --- projects ------------------------------------------------------------------------------

PROJECT_FIELDS = (
    "description",
    "max_gpus",
    "max_concurrent_jobs",
    "max_requests_per_minute",
    "max_priority",
    "max_storage_bytes",
)
#: What only operators (staff) change: a project admin could otherwise grant itself the
#: right to preempt other projects, or the server's disk.
OPERATOR_FIELDS = {"max_priority", "max_storage_bytes"}


def check_priority(project: Project, priority: int, field: str = "priority") -> None:
    """Refuse (400) a priority above what the project's operators allow."""
    if priority > project.max_priority:
        names = dict(PRIORITY_CHOICES)
        raise ServiceError(
            f"Project {project.name} allows priority up to {names[project.max_priority]}; "
            f"{names.get(priority, priority)} needs an operator to raise its max_priority.",
            field,
        )


@transaction.atomic
def create_project(
    actor: Actor,
    *,
    name: str,
    description: str = "",
    max_gpus: int | None = None,
    max_concurrent_jobs: int | None = None,
    max_requests_per_minute: int | None = None,
    max_priority: int = 1,
    max_storage_bytes: int | None = None,
) -> Project:
    """Create a project; the creating user becomes its admin."""
    if actor.user is not None and not actor.user.is_staff:
        raise Forbidden("Only operators (staff users) create projects; ask one to create it.")
    if Project.objects.filter(name=name).exists():
        raise Conflict(f"A project named {name!r} exists already.", field="name")
    try:
        with transaction.atomic():
            project = Project.objects.create(
                name=name,
                description=description,
                max_gpus=max_gpus,
                max_concurrent_jobs=max_concurrent_jobs,
                max_requests_per_minute=max_requests_per_minute,
                max_priority=max_priority,
                max_storage_bytes=max_storage_bytes,
                created_by=actor.user,
            )
    except IntegrityError:
        raise Conflict(f"A project named {name!r} exists already.", field="name") from None
    if actor.user is not None:
        Membership.objects.create(project=project, user=actor.user, role=Role.ADMIN)
    record(
        actor,
        "project.created",
        project,
        project=project,
        detail={f: getattr(project, f) for f in PROJECT_FIELDS},
    )
    return project


@transaction.atomic
def update_project(actor: Actor, project: Project, **changes: Any) -> Project:
    """Change a project's description or quotas (project admins)."""
    require_role(actor, project, Role.ADMIN)
    unknown = set(changes) - set(PROJECT_FIELDS)
    if unknown:
        raise ServiceError(f"These fields cannot be changed: {', '.join(sorted(unknown))}.")
    diff = {f: [getattr(project, f), v] for f, v in changes.items() if getattr(project, f) != v}
    for field in OPERATOR_FIELDS & set(diff):
        if actor.user is not None and not actor.user.is_staff:
            raise Forbidden(f"Only operators (staff users) change a project's {field}.")
    if not diff:
        return project
    for field, (_, new) in diff.items():
        setattr(project, field, new)
    project.save(update_fields=[*diff, "updated_at"])
    record(actor, "project.updated", project, project=project, detail={"changes": diff})
    return project


@transaction.atomic
def ensure_default_project(actor: Actor) -> tuple[Project, bool]:
    """The ``default`` project, created on first run."""
    # One team's install: its own project may use every priority.
    project, created = Project.objects.get_or_create(
        name=DEFAULT_PROJECT, defaults={"description": "Created on first run.", "max_priority": 2}
    )
    if created:
        record(actor, "project.created", project, project=project)
    return project, created


# --- memberships ---------------------------------------------------------------------------


def _check_role(role: str) -> None:
    if role not in Role.values:
        raise ServiceError(f"Unknown role {role!r}: use one of {', '.join(Role.values)}.", "role")


def _admins_left(project: Project, without: Membership) -> int:
    return (
        Membership.objects.filter(project=project, role=Role.ADMIN).exclude(pk=without.pk).count()
    )


@transaction.atomic
def add_member(actor: Actor, project: Project, user: AbstractBaseUser, role: str) -> Membership:
    """Give ``user`` a role in ``project`` (project admins)."""
    require_role(actor, project, Role.ADMIN)
    _check_role(role)
    if Membership.objects.filter(project=project, user=user).exists():
        raise Conflict(
            f"{user.get_username()} is a member already; change their role instead.", "username"
        )
    membership = Membership.objects.create(project=project, user=user, role=role)
    record(actor, "member.added", membership, project=project, detail={"role": role})
    return membership


def check_role_change(membership: Membership, role: str) -> None:
    """Raise unless ``membership`` may take ``role`` (a project keeps at least one admin)."""
    _check_role(role)
    if (
        membership.role == Role.ADMIN
        and role != Role.ADMIN
        and _admins_left(membership.project, membership) == 0
    ):
        raise Conflict("This is the project's last admin; make someone else admin first.", "role")


@transaction.atomic
def change_role(actor: Actor, membership: Membership, role: str) -> Membership:
    """Change a member's role; a project always keeps at least one admin."""
    project = membership.project
    require_role(actor, project, Role.ADMIN)
    _check_role(role)
    membership = Membership.objects.select_for_update().get(pk=membership.pk)
    if membership.role == role:
        return membership
    check_role_change(membership, role)
    old = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    record(
        actor, "member.role_changed", membership, project=project, detail={"from": old, "to": role}
    )
    return membership


@transaction.atomic
def remove_member(actor: Actor, membership: Membership) -> None:
    """Take a user out of a project; a project always keeps at least one admin."""
    project = membership.project
    require_role(actor, project, Role.ADMIN)
    if membership.role == Role.ADMIN and _admins_left(project, membership) == 0:
        raise Conflict("This is the project's last admin; make someone else admin first.")
    record(
        actor,
        "member.removed",
        membership,
        project=project,
        detail={"user": membership.user.get_username(), "role": membership.role},
    )
    membership.delete()
    sockets.close_sockets_of(membership.user_id)


# --- API tokens ----------------------------------------------------------------------------


class TokenError(Exception):
    """A bearer token that does not authenticate; the message says why."""


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


@transaction.atomic
def create_token(
    actor: Actor, user: AbstractBaseUser, name: str, expires_at: datetime | None = None
) -> tuple[ApiToken, str]:
    """Mint a token for ``user``. The secret is returned once and never stored."""
    if actor.user is not None and actor.user.pk != user.pk and not actor.user.is_superuser:
        raise Forbidden("You can only create tokens for yourself.")
    if not name.strip():
        raise ServiceError("Give the token a name.", "name")
    if expires_at is not None and expires_at <= timezone.now():
        raise ServiceError("expires_at must be in the future.", "expires_at")
    public = secrets.token_hex(4)
    raw = f"{TOKEN_PREFIX}{public}_{secrets.token_urlsafe(32)}"
    token = ApiToken.objects.create(
        user=user,
        name=name.strip(),
        prefix=f"{TOKEN_PREFIX}{public}",
        digest=_digest(raw),
        expires_at=expires_at,
    )
    record(
        actor,
        "token.created",
        token,
        detail={"user": user.get_username(), "expires_at": expires_at and expires_at.isoformat()},
    )
    return token, raw


@transaction.atomic
def revoke_token(actor: Actor, token: ApiToken) -> ApiToken:
    """Revoke a token at once; revoking twice changes nothing."""
    if actor.user is not None and actor.user.pk != token.user_id and not actor.user.is_superuser:
        raise Forbidden("You can only revoke your own tokens.")
    updated = ApiToken.objects.filter(pk=token.pk, revoked_at=None).update(
        revoked_at=timezone.now()
    )
    token.refresh_from_db()
    if updated:
        record(actor, "token.revoked", token, detail={"user": token.user.get_username()})
        sockets.close_sockets_of(token.user_id)
    return token


def authenticate_token(raw: str, ip: str | None = None) -> ApiToken:
    """The active token for ``raw``, with its user; raises ``TokenError`` saying why not."""
    if not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
        raise TokenError("Invalid token: it is not a token this server issued.")
    token = ApiToken.objects.select_related("user").filter(digest=_digest(raw)).first()
    if token is None:
        raise TokenError("Invalid token: no such token.")
    now = timezone.now()
    state = token.state_at(now)
    if state == TokenState.REVOKED:
        raise TokenError(f"Token {token.prefix}… was revoked; create a new one.")
    if state == TokenState.EXPIRED:
        raise TokenError(f"Token {token.prefix}… expired at {token.expires_at:%Y-%m-%d %H:%M} UTC.")
    if not token.user.is_active:
        raise TokenError("The token's user is inactive.")
    stale = now - timedelta(seconds=settings.TOKEN_LAST_USED_RESOLUTION)
    if token.last_used_at is not None and token.last_used_at >= stale:
        return token  # recorded this minute: no write (on SQLite even an empty UPDATE locks)
    # At most one write a minute per token, and never two processes for the same minute.
    # Best effort: a request that only reads must not fail because the database is busy
    # with writes (on SQLite, one writer at a time).
    try:
        ApiToken.objects.filter(pk=token.pk).filter(
            models.Q(last_used_at=None) | models.Q(last_used_at__lt=stale)
        ).update(last_used_at=now, last_used_ip=ip)
    except OperationalError as exc:
        log.info("token %s: last use not recorded (%s)", token.prefix, exc)
    return token


# --- first run and housekeeping ------------------------------------------------------------


@transaction.atomic
def bootstrap(admin_password: str | None = None) -> str | None:
    """First run: the ``admin`` superuser and the ``default`` project.

    Returns the admin password when it was generated here (to print once), else None.
    """
    actor = Actor(user=None, via="cli")
    generated = None
    admin = User.objects.filter(username="admin").first()
    if admin is None:
        password = admin_password or secrets.token_urlsafe(12)
        generated = None if admin_password else password
        admin = User.objects.create_superuser("admin", email="", password=password)
        record(actor, "user.created", admin, detail={"superuser": True})
    project, _ = ensure_default_project(actor)
    if not Membership.objects.filter(project=project, user=admin).exists():
        membership = Membership.objects.create(project=project, user=admin, role=Role.ADMIN)
        record(actor, "member.added", membership, project=project, detail={"role": Role.ADMIN})
    return generated


def purge_audit_events(older_than_days: int) -> int:
    """Delete audit events older than the retention; returns how many went."""
    cutoff = timezone.now() - timedelta(days=older_than_days)
    deleted, _ = AuditEvent.objects.filter(created_at__lt=cutoff).delete()
    return deleted
