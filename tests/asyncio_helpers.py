"""Running async (websocket) scenarios from synchronous tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from channels.db import database_sync_to_async
from django.db import connections

T = TypeVar("T")


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    """Run a scenario, then close the DB connections its sync_to_async thread opened
    (left open, they would keep the test database from being dropped)."""

    async def wrapped() -> T:
        try:
            return await scenario()
        finally:
            await database_sync_to_async(connections.close_all)()

    return asyncio.run(wrapped())
