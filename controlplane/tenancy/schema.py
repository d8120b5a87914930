"""OpenAPI description of the Bearer token authentication (for drf-spectacular)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "controlplane.tenancy.auth.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A personal API token: POST /api/v1/tokens/ or "
            "`manage.py create_token USERNAME`.",
        }


class AttemptTokenScheme(OpenApiAuthenticationExtension):
    target_class = "jobs.attempt_auth.AttemptTokenAuthentication"
    name = "attemptToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A running job's CP_ATTEMPT_TOKEN (cpat_...): /api/v1/attempt/ only.",
        }
