"""Database sessions that cannot hold locks forever.

A worker host that freezes (SIGSTOP, swapped out, cut off from the database) in the middle
of a transaction keeps its row locks for as long as its session lives, and a frozen process
on a reachable host keeps its TCP connection alive. The reaper, which must give that host's
jobs up, would wait on those locks without end. PostgreSQL's
``idle_in_transaction_session_timeout`` ends such a session (and frees its locks) after
``CP_DB_IDLE_IN_TRANSACTION_TIMEOUT`` seconds; the process gets a closed connection when it
wakes, and Django opens a new one.
"""

from __future__ import annotations

from django.conf import settings


def bound_idle_transactions(sender, connection, **kwargs) -> None:
    """``connection_created`` receiver: set the idle-in-transaction timeout (PostgreSQL)."""
    if connection.vendor != "postgresql":
        return
    milliseconds = int(settings.DB_IDLE_IN_TRANSACTION_TIMEOUT * 1000)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
            [str(milliseconds)],
        )
