"""The time-range picker every page with a chart over time shares (Grafana's idea: one
row of ranges, the chosen one in the URL as ``?range=1h`` so a view can be shared).

A page picks the ranges it offers and a default; :func:`picker` reads ``?range=`` (an
unknown one falls back to the default) and gives the template component
``components/time_range.html`` what it draws. Pages whose charts are fed by a script
mark the picker ``live``: the script (``common/time_range.js``) then switches ranges in
place and keeps the URL in step; elsewhere each range is a plain link the server renders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest


@dataclass(frozen=True)
class TimeRange:
    key: str
    seconds: int
    label: str

    @property
    def days(self) -> int:
        return max(1, self.seconds // 86400)


RANGES = {
    r.key: r
    for r in (
        TimeRange("15m", 900, "15 min"),
        TimeRange("1h", 3600, "1 h"),
        TimeRange("6h", 6 * 3600, "6 h"),
        TimeRange("24h", 86400, "24 h"),
        TimeRange("7d", 7 * 86400, "7 days"),
        TimeRange("30d", 30 * 86400, "30 days"),
        TimeRange("90d", 90 * 86400, "90 days"),
    )
}

#: What the telemetry pages offer: the first is the live window the websocket carries.
TELEMETRY = ("15m", "1h", "6h", "24h", "7d")


def picker(
    request: HttpRequest, keys: tuple[str, ...], default: str, *, live: bool = False
) -> dict[str, Any]:
    """The picker's context: its ranges, the one ``?range=`` chose (else ``default``)."""
    options = [RANGES[k] for k in keys]
    wanted = request.GET.get("range", "")
    current = RANGES[wanted] if wanted in keys else RANGES[default]
    return {"options": options, "current": current, "live": live}


def covering(seconds: float, keys: tuple[str, ...]) -> str:
    """The shortest of ``keys`` at least ``seconds`` long (else the longest)."""
    for key in keys:
        if RANGES[key].seconds >= seconds:
            return key
    return keys[-1]
