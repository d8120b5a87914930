"""Errors that services raise; the API turns them into 4xx responses with their message."""

from __future__ import annotations


class ServiceError(Exception):
    """A request that cannot be carried out as asked. ``field`` names the input at fault."""

    status_code = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class Conflict(ServiceError):
    """The request clashes with the current state (already a member, last admin, ...)."""

    status_code = 409


class Missing(ServiceError):
    """An object the request names (a project, a user, a checkpoint) does not exist, or is
    not in any of the caller's projects: 404, as a URL naming it would be."""

    status_code = 404


class TooLarge(ServiceError):
    """Over a size limit or a quota (413)."""

    status_code = 413


class InsufficientStorage(ServiceError):
    """The server's disk has no room for it now (507)."""

    status_code = 507


class Forbidden(ServiceError):
    """The caller may see the object but lacks the role for this action."""

    status_code = 403
