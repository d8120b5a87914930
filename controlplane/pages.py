"""What every server-rendered page shares: the caller's role in a project (to show or hide
actions), the API's errors turned into per-field form messages, and query strings that
keep a list's filters across pages and sorts.

Pages never change state themselves: a form posts to a view that calls the same service
as the REST API, so the role checks, messages and audit events are the API's."""

from __future__ import annotations

from typing import Any

import yaml
from django.http import HttpRequest, QueryDict
from django.shortcuts import resolve_url
from django.utils.http import url_has_allowed_host_and_scheme
from rest_framework.exceptions import APIException

from controlplane.tenancy.errors import ServiceError
from controlplane.tenancy.models import Membership, Role, role_at_least


def role_in(user: Any, project_id: int) -> str | None:
    """The user's role in a project (a superuser is an admin everywhere)."""
    if user.is_superuser:
        return Role.ADMIN
    return (
        Membership.objects.filter(user=user, project_id=project_id)
        .values_list("role", flat=True)
        .first()
    )


def can(user: Any, project_id: int, role: str = Role.MEMBER) -> bool:
    have = role_in(user, project_id)
    return have is not None and role_at_least(have, role)


def _flatten(detail: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(detail, dict):
        out: list[tuple[str, str]] = []
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix and key != "non_field_errors" else str(key)
            out += _flatten(value, name if key != "non_field_errors" else prefix)
        return out
    if isinstance(detail, list):
        out = []
        for index, item in enumerate(detail):
            nested = isinstance(item, dict | list)
            out += _flatten(item, f"{prefix}[{index}]" if nested else prefix)
        return out
    return [(prefix, str(detail))]


def field_errors(exc: APIException | ServiceError) -> dict[str, list[str]]:
    """``{field: [message, ...]}`` of an API error ("" holds the ones about no field)."""
    if isinstance(exc, ServiceError):
        return {getattr(exc, "field", "") or "": [exc.message]}
    errors: dict[str, list[str]] = {}
    for field, message in _flatten(exc.detail):
        errors.setdefault("" if field == "detail" else field, []).append(message)
    return errors


def error_lines(exc: APIException | ServiceError) -> list[str]:
    """The same errors as one line each, ``field: message`` (for a flash message)."""
    return [
        f"{field}: {message}" if field else message
        for field, messages in field_errors(exc).items()
        for message in messages
    ]


def query_without(request: HttpRequest, *names: str) -> str:
    """The request's query string minus ``names`` (links that change one parameter)."""
    query: QueryDict = request.GET.copy()
    for name in names:
        query.pop(name, None)
    return query.urlencode()


def safe_next(request: HttpRequest, default: str, *args: Any) -> str:
    """Where a form asked to go back to (``next``), if it is on this site; else ``default``."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return resolve_url(default, *args)


def spec_yaml(spec: dict) -> str:
    """A stored spec as the YAML a user would write (for clone and edit)."""
    return yaml.safe_dump(spec, sort_keys=False, default_flow_style=None, width=100)


def body_too_large(request: HttpRequest, limit: int, what: str) -> str | None:
    """A message when the request's body is over ``limit`` bytes (checked from its
    Content-Length before the upload is read, so a huge file is refused, not spooled)."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > limit:
        return f"The upload is {length} bytes; {what} may be at most {limit} bytes."
    return None
