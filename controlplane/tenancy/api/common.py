"""What every app's API shares: body limits, strict serializers, errors, pagination.

The rule it enforces: bad input gets a 4xx whose message says what to fix, never a 500.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError, OperationalError
from django.http import QueryDict
from rest_framework import exceptions, parsers, serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response

from controlplane import degraded
from controlplane.tenancy.errors import ServiceError

log = logging.getLogger(__name__)


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "payload_too_large"


class LimitedMultiPartParser(parsers.MultiPartParser):
    """Multipart uploads refused early (413) when the declared size is over the setting
    named by ``limit_setting`` (plus the form fields' allowance)."""

    limit_setting = ""
    what = "uploads"

    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH", "") if request is not None else ""
        allowed = getattr(settings, self.limit_setting)
        if declared.isdigit() and int(declared) > allowed + settings.API_MAX_BODY_BYTES:
            raise PayloadTooLarge(
                f"The upload is {declared} bytes; {self.what} may be at most {allowed} bytes."
            )
        return super().parse(stream, media_type, parser_context)


class LimitedJSONParser(parsers.JSONParser):
    """JSON bodies up to ``CP_API_MAX_BODY_BYTES``; larger ones get a 413 before parsing."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        limit = settings.API_MAX_BODY_BYTES
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        if declared and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"Request body is {declared} bytes; the limit is {limit}.")
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise PayloadTooLarge(f"Request body is over the limit of {limit} bytes.")
        if not body.strip():
            raise exceptions.ParseError("The request body is empty; send a JSON object.")
        try:
            return json.loads(body.decode(parser_context.get("encoding", "utf-8")))
        except UnicodeDecodeError:
            raise exceptions.ParseError("The request body is not valid UTF-8.") from None
        except ValueError as exc:
            raise exceptions.ParseError(f"JSON parse error: {exc}.") from None


# What a JSON value of each field must be: DRF would turn 5 into "5" and "5" into 5, so a
# client's mistake (or a generated client's) would pass silently, and the schema would lie.
_JSON_TYPES: list[tuple[type, tuple[type, ...], str]] = [
    (serializers.BooleanField, (bool,), "true or false"),
    (serializers.CharField, (str,), "a string"),
    (serializers.IntegerField, (int,), "a whole number"),
    (serializers.FloatField, (int, float), "a number"),
]


def _wrong_types(fields: dict[str, serializers.Field], data: dict) -> dict[str, list[str]]:
    errors = {}
    for name, field in fields.items():
        value = data.get(name)
        if field.read_only or value is None:
            continue
        for kind, allowed, said in _JSON_TYPES:
            if isinstance(field, kind):
                wrong = isinstance(value, bool) and bool not in allowed
                if wrong or not isinstance(value, allowed):
                    errors[name] = [f"Must be {said}, not {type(value).__name__}."]
                break
    return errors


class StrictSerializer(serializers.Serializer):
    """A serializer that rejects fields it does not know instead of ignoring them, and in
    a JSON body values of the wrong type (a form's values are all strings: those DRF reads).

    Read-only fields are let through (and ignored), so a client may send back what it read.
    """

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict) and not isinstance(data, QueryDict):
            if wrong := _wrong_types(self.fields, data):
                raise serializers.ValidationError(wrong)
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                writable = sorted(n for n, f in self.fields.items() if not f.read_only)
                raise serializers.ValidationError(
                    {
                        name: [f"Unknown field. Fields you can set: {', '.join(writable)}."]
                        for name in unknown
                    }
                )
        return super().to_internal_value(data)


class StrictModelSerializer(StrictSerializer, serializers.ModelSerializer):
    """``StrictSerializer`` for model serializers."""


class Pagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 1000

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_query_param:
                parameter["schema"]["minimum"] = 1
            elif parameter["name"] == self.page_size_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_page_size)
        return parameters

    def get_page_size(self, request: Any) -> int | None:
        """``page_size`` from 1 to 1000, or a 400 saying so (DRF ignores a bad one)."""
        given = request.query_params.getlist(self.page_size_query_param)
        if not given:
            return self.page_size
        if len(given) > 1 or not given[0].isdigit() or not 1 <= int(given[0]) <= 1000:
            raise exceptions.ValidationError(
                {"page_size": [f"Give one whole number from 1 to {self.max_page_size}."]}
            )
        return int(given[0])


def _only_missing(codes: Any) -> bool:
    if isinstance(codes, dict):
        return bool(codes) and all(_only_missing(c) for c in codes.values())
    if isinstance(codes, list):
        return bool(codes) and all(_only_missing(c) for c in codes)
    return codes == "does_not_exist"


def _messages(detail: Any) -> list[str]:
    if isinstance(detail, dict):
        return [m for value in detail.values() for m in _messages(value)]
    if isinstance(detail, list):
        return [m for value in detail for m in _messages(value)]
    return [str(detail)]


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus service errors and model validation as 4xx with a message."""
    if isinstance(exc, ServiceError):
        body: dict[str, Any] = {"detail": exc.message}
        if exc.field:
            body[exc.field] = [exc.message]
        return Response(body, status=exc.status_code)
    if isinstance(exc, RequestDataTooBig):
        limit = settings.API_MAX_BODY_BYTES
        return Response(
            {"detail": f"Request body is over the limit of {limit} bytes."},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, exceptions.ValidationError) and _only_missing(exc.get_codes()):
        # Every error is a reference to nothing (a project or user that does not exist):
        # a 404, as a URL naming it would be, with the field named as for any error.
        body = exc.detail if isinstance(exc.detail, dict) else {"detail": exc.detail}
        first = next(iter(_messages(exc.detail)), "No such object.")
        return Response({"detail": first, **body}, status=status.HTTP_404_NOT_FOUND)
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
        return Response(detail, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, degraded.UNREACHABLE):
        degraded.REDIS.failed(exc)
        return Response(
            {"detail": degraded.unavailable_message()},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(degraded.RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, DataError):
        # A value the database refuses (an integer out of range, ...): the input's fault.
        log.info("database refused a value: %s", exc)
        return Response(
            {"detail": "A value is out of range for its field."},
            status=status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(exc, OperationalError):
        # The database is unreachable or busy past its timeout (SQLite: a writer that does
        # not let go): transient, so 503 in the API's format rather than an HTML 500.
        log.warning("database unavailable: %s", exc)
        return Response(
            {"detail": "The database is busy or unreachable; retry in a few seconds."},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(degraded.RETRY_AFTER_SECONDS)},
        )
    # Imported here: rest_framework.views reads the API settings, which name this module.
    from rest_framework.views import exception_handler as drf_exception_handler

    return drf_exception_handler(exc, context)
