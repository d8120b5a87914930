"""The "latest" store in Redis: each host's last sample (what ``/metrics``, the API and a
websocket's first message read) and a short recent window of compact samples per host
(what charts start from). Written by the telemetry agent, read by the web processes.

A host's latest sample expires a few intervals after its agent stops, so a dead host's
GPUs drop out of ``/metrics`` instead of exporting stale values.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from typing import Any

import redis
from django.conf import settings

log = logging.getLogger(__name__)
_client: redis.Redis | None = None
_lock = threading.Lock()


def client() -> redis.Redis:
    global _client
    with _lock:
        if _client is None:
            _client = redis.Redis.from_url(
                settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2
            )
        return _client


def _key(kind: str, worker_id: int) -> str:
    return f"{settings.CACHES['default']['KEY_PREFIX']}:tm:{kind}:{worker_id}"


def put(worker_id: int, frame_text: str, compact_text: str | None) -> None:
    """Store a host's newest sample (and add it to the recent window)."""
    ttl = max(5, int(settings.TELEMETRY_INTERVAL * 10))
    pipe = client().pipeline(transaction=False)
    pipe.set(_key("latest", worker_id), frame_text, ex=ttl)
    if compact_text is not None:
        recent = _key("recent", worker_id)
        pipe.lpush(recent, compact_text)
        pipe.ltrim(recent, 0, settings.TELEMETRY_RECENT_POINTS - 1)
        pipe.expire(recent, int(settings.TELEMETRY_RECENT_SECONDS) + 60)
    pipe.execute()


def latest_texts(worker_ids: Iterable[int]) -> dict[int, str]:
    """Raw latest samples; {} while Redis is away (pages and /metrics show none)."""
    ids = list(worker_ids)
    if not ids:
        return {}
    try:
        values = client().mget([_key("latest", i) for i in ids])
    except redis.RedisError:
        log.warning("the latest telemetry store is unreachable", exc_info=True)
        return {}
    return {i: v.decode() for i, v in zip(ids, values, strict=True) if v is not None}


def latest(worker_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The newest sample of each of ``worker_ids`` that has one (decoded)."""
    return {i: json.loads(text) for i, text in latest_texts(worker_ids).items()}


def recent(worker_id: int, since: float | None = None, limit: int | None = None) -> list[dict]:
    """Compact samples of the recent window, oldest first, newer than ``since``."""
    stop = -1 if limit is None else limit - 1
    try:
        raw = client().lrange(_key("recent", worker_id), 0, stop)
    except redis.RedisError:
        log.warning("the recent telemetry window is unreachable", exc_info=True)
        return []
    entries = [json.loads(item) for item in reversed(raw)]
    if since is not None:
        entries = [e for e in entries if e["t"] > since]
    return entries
