"""Logging helpers named by the settings' LOGGING (no model imports: loaded before apps)."""

import logging


class NotReadyzFilter(logging.Filter):
    """Drops Django's error record for a 503 from /readyz (an answer, not a failure)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        return not (
            getattr(record, "status_code", None) == 503
            and getattr(request, "path", "") == "/readyz"
        )
