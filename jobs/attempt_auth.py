"""The attempt token (``CP_ATTEMPT_TOKEN``) as a credential: good for its own job only.

A node gets a fresh token when it is claimed (its SHA-256 digest is stored on the node).
With ``Authorization: Bearer cpat_...`` the SDK may read its own job (spec, state, whether
to stop) and report metrics, progress and checkpoints under ``/api/v1/attempt/``; nothing
else. The token stops working the moment its node stops running (the attempt ended, was
fenced or lost), so a stale attempt can no longer write.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from controlplane.tenancy.auth import bearer_from_header
from jobs.models import AttemptNode, NodeState
from jobs.states import ATTEMPT_LIVE

ATTEMPT_TOKEN_PREFIX = "cpat_"  # noqa: S105 (a public marker, not a secret)
#: The only paths an attempt token opens.
ATTEMPT_PATH = "/api/v1/attempt/"


@dataclass
class AttemptPrincipal:
    """Who calls with an attempt token: one running node of one attempt. Not a user: it
    has no project membership, so every project-scoped view refuses it."""

    node: AttemptNode
    is_authenticated: bool = True
    is_active: bool = True
    is_staff: bool = False
    is_superuser: bool = False

    @property
    def pk(self) -> str:
        """Its own identity (the per-user throttle keys on it): never a user's id."""
        return f"attempt-node-{self.node.pk}"

    id = pk

    @property
    def username(self) -> str:
        return f"attempt:{self.node.attempt_id}/node{self.node.rank}"

    def __str__(self) -> str:
        return self.username


def digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def node_for_token(raw: str) -> AttemptNode | None:
    """The running node that holds ``raw``, or None (unknown, or its run is over)."""
    if not raw.startswith(ATTEMPT_TOKEN_PREFIX) or len(raw) > 200:
        return None
    return (
        AttemptNode.objects.select_related("attempt__job")
        .filter(
            token_digest=digest(raw),
            state=NodeState.RUNNING,
            attempt__state__in=ATTEMPT_LIVE,
        )
        .first()
    )


class AttemptTokenAuthentication(authentication.BaseAuthentication):
    """Authenticates attempt tokens, on the SDK's endpoints only (403 anywhere else)."""

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        raw = bearer_from_header(request.META.get("HTTP_AUTHORIZATION"))
        if not raw or not raw.startswith(ATTEMPT_TOKEN_PREFIX):
            return None  # a personal token (or none): the other authenticators decide
        if not request.path.startswith(ATTEMPT_PATH):
            raise exceptions.PermissionDenied(
                f"An attempt token is only good for its own job's SDK endpoints ({ATTEMPT_PATH})."
            )
        node = node_for_token(raw)
        if node is None:
            raise exceptions.AuthenticationFailed(
                "Invalid attempt token: unknown, or its attempt is no longer running."
            )
        return AttemptPrincipal(node), node

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="attempt"'
