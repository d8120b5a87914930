"""Schemathesis hooks for the contract run (``SCHEMATHESIS_HOOKS=tests.contract.hooks``).

A schema-valid request the API refuses is a failure (the schema lies) except for the rules
below, which hold between a request's values and the clock, the cluster or each other in
ways JSON Schema cannot say. Each is named by the operation, the field the 400 names and
the words of its message, so any other refusal still fails the run. Rules JSON Schema *can*
say are in the schema itself (bounds, patterns, ``not``/``oneOf`` from ``body_rules``).
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis
from schemathesis.core.failures import Failure

_TELEMETRY = (
    "GET /api/v1/workers/{worker_id}/telemetry/",
    "GET /api/v1/gpus/{id}/telemetry/",
    "GET /api/v1/telemetry/history/",
    "GET /api/v1/jobs/{job_id}/telemetry/",
)
_WEBHOOKS = "POST /api/v1/projects/{project_pk}/webhooks/"
_WEBHOOK_URL_WORDS = ("http:// or https://", "not a public address", "no credentials")
_OUTPUTS = (
    ("GET /api/v1/jobs/{job_id}/outputs/", "prefix"),
    ("GET /api/v1/jobs/{job_id}/outputs/file/", "path"),
    ("GET /api/v1/jobs/{job_id}/outputs/archive/", "prefix"),
)

#: (operation, field, words of the message): refusals the schema cannot foretell.
UNSAYABLE: list[tuple[str, str, str]] = [
    # A range of at most 5000 points, and from before to: the two values against each other.
    *[(op, "step", "points.") for op in _TELEMETRY],
    *[(op, "from", "must be before") for op in _TELEMETRY],
    # A path inside a job's outputs: no '..', '.' or empty parts (as the listing shows).
    *[(op, field, "is not a path inside") for op, field in _OUTPUTS],
    # A webhook's URL: an http(s) URL of a public address (what DNS says, later, too).
    *[(_WEBHOOKS, "url", words) for words in _WEBHOOK_URL_WORDS],
    # Against the clock.
    ("POST /api/v1/tokens/", "expires_at", "in the future"),
    ("PATCH /api/v1/tokens/{id}/", "expires_at", "in the future"),
    # What is inside an uploaded file: a tar or zip of a Hugging Face model directory.
    ("POST /api/v1/models/{id}/versions/", "archive", "Not a"),
    ("POST /api/v1/models/{id}/versions/", "archive", "no config.json"),
    ("POST /api/v1/models/{id}/versions/", "source", "Not a usable model directory"),
    # min_replicas against max_replicas.
    ("POST /api/v1/deployments/", "replicas", "must be at most max"),
    ("PATCH /api/v1/deployments/{id}/", "replicas", "must be at most max"),
]

#: Operations whose body is a job spec: it is valid only against the code archive that
#: comes with it (the entrypoint must be in it), the cluster (resources a host can hold)
#: and the project (its secrets, quotas, priority cap). The rest of the schema holds. A
#: sweep file holds such a spec (its ``job``), checked the same way for its first trials.
SPEC_BODIES = {"POST /api/v1/jobs/", "POST /api/v1/batch-jobs/", "POST /api/v1/sweeps/"}


def _refusals(response: Any) -> dict[str, list[str]]:
    try:
        body = json.loads(response.content or b"{}")
    except ValueError:
        return {}
    if not isinstance(body, dict):
        return {}
    found: dict[str, list[str]] = {}
    for field, value in body.items():
        if field == "detail":
            continue
        messages = value if isinstance(value, list) else [value]
        found[field] = [str(m) for m in messages]
    return found


def _undeclared_fields(case: Any) -> bool:
    """A body with properties its (closed) schema does not declare: the stateful phase puts
    values from earlier responses into bodies by name; the API is right to refuse them."""
    if not isinstance(case.body, dict) or case.media_type is None:
        return False
    raw = case.operation.definition.raw
    schema = raw.get("requestBody", {}).get("content", {}).get(case.media_type, {})
    schema = schema.get("schema", {})
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = case.operation.schema.raw_schema["components"]["schemas"].get(name, {})
    properties = schema.get("properties")
    return isinstance(properties, dict) and bool(set(case.body) - set(properties))


@schemathesis.hook
def filter_failure(ctx: Any, failure: Failure, case: Any, response: Any) -> bool:
    if type(failure).__name__ != "RejectedPositiveData":
        return True
    if response.status_code == 413 and b"storage quota" in (response.content or b""):
        return False  # the project's storage quota: the data stored so far, not the request
    if response.status_code != 400:
        return True
    label = case.operation.label
    if label in SPEC_BODIES or _undeclared_fields(case):
        return False
    refusals = _refusals(response)
    if not refusals:
        return True
    excused = all(
        any(op == label and field == name and words in message for op, field, words in UNSAYABLE)
        for name, messages in refusals.items()
        for message in messages
    )
    return not excused
