"""Channel-layer sends from synchronous code, on one long-lived event loop per process.

``async_to_sync(layer.group_send)`` in a thread without an event loop (a Celery worker's
launcher, a beat task, a management command) runs each call on a fresh loop, and
channels_redis keeps its connections per loop: every send opened, authenticated and
closed a Redis connection (6 ms for a job event's two group sends on an idle 2-core
machine, tens under load, on the path of every log flush and state change). Here the
sends run on a loop that lives as long as the process, so its connection pool is reused.
The caller still waits for the send to finish (order and errors are as before).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any

DEFAULT_TIMEOUT = 5.0

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid = 0


def _running_loop() -> asyncio.AbstractEventLoop:
    global _loop, _pid
    with _lock:
        if _loop is None or _pid != os.getpid():  # first use, or a forked child
            _loop = asyncio.new_event_loop()
            _pid = os.getpid()
            threading.Thread(target=_loop.run_forever, name="cp-realtime", daemon=True).start()
        return _loop


def run(coro: Coroutine[Any, Any, Any], timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Run ``coro`` on the process's realtime loop and return its result (or raise its
    exception; ``TimeoutError`` past ``timeout`` seconds, the send then cancelled)."""
    future = asyncio.run_coroutine_threadsafe(coro, _running_loop())
    try:
        return future.result(timeout)
    except TimeoutError:
        future.cancel()
        raise


def group_send(layer: Any, groups: list[str], message: dict[str, Any]) -> None:
    """``layer.group_send`` to each group in turn, from synchronous code."""

    async def send_all() -> None:
        for name in groups:
            await layer.group_send(name, message)

    run(send_all())
