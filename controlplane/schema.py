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
        if has_path_id or self._is_list_view() or has_body:
            # An object of a project you are not in is a 404 too; so is a page past the end,
            # and a body naming a project, user or checkpoint that does not exist.
            errors["404"] = (
                "No such object (or it is not in any of your projects), page, or object "
                "named in the body."
            )
        if self.method != "GET":
            errors["409"] = "The object's state does not allow this now, or the name is taken."
        if has_body:
            errors["413"] = "The request body (or upload) is over its limit."
            errors["415"] = "The body's Content-Type is not one this operation takes."
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


#: Rules between fields of a request body that a plain object schema cannot say, by the
#: body's component name: ``exclusive`` pairs (not both), ``one_of`` (exactly one).
_RULES: dict[str, dict[str, Any]] = {}


def body_rules(*, exclusive: tuple[tuple[str, str], ...] = (), one_of: tuple[str, ...] = ()) -> Any:
    """Class decorator for a request serializer: its cross-field rules go into the schema
    (``not: {required: [a, b]}``, ``oneOf``), so a generated client or a fuzzer knows them."""

    def mark(cls: type) -> type:
        base = cls.__name__.removesuffix("Serializer")
        for name in (f"{base}Request", f"Patched{base}Request"):
            _RULES[name] = {"exclusive": exclusive, "one_of": one_of}
        return cls

    return mark


def _apply_rules(component: dict[str, Any], rules: dict[str, Any]) -> None:
    constraints = [{"not": {"required": list(pair)}} for pair in rules["exclusive"]]
    if rules["one_of"]:
        names = rules["one_of"]
        constraints.append(
            {
                "oneOf": [
                    {
                        "required": [n],
                        "not": {"anyOf": [{"required": [o]} for o in names if o != n]},
                    }
                    for n in names
                ]
            }
        )
    if constraints:
        component["allOf"] = constraints


#: DRF's CharField refuses NUL characters (ProhibitNullCharactersValidator).
NO_NUL = r"^[^\x00]*$"


def _no_nul(properties: dict[str, Any]) -> None:
    for prop in properties.values():
        if prop.get("type") == "string" and "format" not in prop and "enum" not in prop:
            prop.setdefault("pattern", NO_NUL)
        elif prop.get("type") == "array" and isinstance(prop.get("items"), dict):
            _no_nul({"item": prop["items"]})


def closed_request_bodies(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Request bodies say ``additionalProperties: false``: the API refuses unknown fields
    (a typo is an error, not silently ignored), so the schema must say so too; and the
    cross-field rules of ``body_rules``."""
    for name, component in result.get("components", {}).get("schemas", {}).items():
        if name.endswith("Request") and component.get("type") == "object":
            component.setdefault("additionalProperties", False)
            _no_nul(component.get("properties", {}))
            if name in _RULES:
                _apply_rules(component, _RULES[name])
    for path in result.get("paths", {}).values():
        for operation in path.values():
            if not isinstance(operation, dict):
                continue
            content = operation.get("requestBody", {}).get("content", {})
            for media in content.values():
                schema = media.get("schema", {})
                ref = schema.get("$ref", "").rsplit("/", 1)[-1]
                if _RULES.get(ref, {}).get("one_of"):
                    operation["requestBody"]["required"] = True  # one of them, so a body
                if schema.get("type") == "object" and "properties" in schema:
                    schema.setdefault("additionalProperties", False)
    return result
