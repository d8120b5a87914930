"""The OpenAPI schema's shared parts: every operation documents the errors it can answer.

drf-spectacular documents only the success of each operation; a client generated from
that (and schemathesis) then meets 400s, 404s and 429s the schema never mentioned. Every
error of this API has the same shape (``{"detail": "..."}``, or ``{"<field>": ["..."]}``
for a field), so each operation gets the statuses it can really produce, with that shape.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers


class ErrorSerializer(serializers.Serializer):
    """An error: ``detail`` says what to fix; a field's errors come under its name."""

    detail = serializers.CharField(required=False, help_text="What went wrong and what to fix.")


class ControlPlaneSchema(AutoSchema):
    def _error_statuses(self) -> dict[str, str]:
        has_body = self.method in ("POST", "PUT", "PATCH")
        has_path_id = "{" in self.path
        errors: dict[str, str] = {
            "401": "No credentials, or a bad, expired or revoked token.",
            "403": "Your role in the project does not allow this.",
            "429": "Too many requests: wait for `Retry-After` seconds.",
            "503": "A service it needs (Redis, the broker) is unreachable: retry after "
            "`Retry-After` seconds.",
        }
        # Any query parameter (an unknown one included) or body can be refused.
        errors["400"] = "The input is not valid: the message names the field and what to fix."
        if has_path_id or self._is_list_view():
            # An object of a project you are not in is a 404 too; so is a page past the end.
            errors["404"] = "No such object (or it is not in any of your projects), or page."
        if self.method != "GET":
            errors["409"] = "The object's state does not allow this now, or the name is taken."
        if has_body:
            errors["413"] = "The request body (or upload) is over its limit."
        return errors

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for code, description in self._error_statuses().items():
            if code not in responses:
                response = self._get_response_for_code(ErrorSerializer, code, direction=direction)
                response["description"] = description
                responses[code] = response
        return responses


def closed_request_bodies(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Request bodies say ``additionalProperties: false``: the API refuses unknown fields
    (a typo is an error, not silently ignored), so the schema must say so too."""
    for name, component in result.get("components", {}).get("schemas", {}).items():
        if name.endswith("Request") and component.get("type") == "object":
            component.setdefault("additionalProperties", False)
    return result
