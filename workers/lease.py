"""A node's lease, kept on a thread of its own, and the self-fencing deadline that goes
with it.

The control plane gives a node up (and places its job again) when its lease has not been
renewed for ``CP_JOB_LEASE_SECONDS``. So the node must be gone by then, whatever happened
to its worker: renewals run here, never behind log shipping or event processing, and each
one that succeeds is passed to the node's guard (an ``R`` on its lifeline). When none
succeeded for half the lease the workload is asked to stop (SIGTERM: it checkpoints), at
three quarters it is killed: by the launcher if it is still running, by the guard on its
own if the worker is frozen or cut off. The last quarter is the margin for clock skew
between this host and the reaper's, and for the reaper's own interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.db import close_old_connections, connection

from jobs import lifecycle

log = logging.getLogger(__name__)

#: Fractions of the lease after the last successful renewal.
TERM_AT = 0.5
KILL_AT = 0.75


def fence_after() -> tuple[float, float]:
    """Seconds without a renewal after which the workload gets SIGTERM, then SIGKILL."""
    lease = settings.JOB_LEASE_SECONDS
    return lease * TERM_AT, lease * KILL_AT


class LeaseKeeper(threading.Thread):
    """Renews one node's lease every ``CP_JOB_LEASE_RENEW_INTERVAL`` until stopped.

    ``fenced`` is set when the control plane says the node is no longer this run's (the
    attempt ended, or it was given up on); ``stop`` holds what the control plane asks of
    it (a StopReason, or ""). ``on_renewed`` is called after each renewal that succeeded.
    """

    def __init__(self, node_id: int, claim: str, label: str = "") -> None:
        super().__init__(name=f"cp-lease-{node_id}", daemon=True)
        self.node_id = node_id
        self.claim = claim
        self.label = label or f"node {node_id}"
        self.renewed = time.monotonic()  # the claim itself set the first lease
        self.stop = ""
        self.fenced = threading.Event()
        self.on_renewed: Callable[[], None] | None = None
        self._done = threading.Event()
        self._failing_since: float | None = None

    def silent_for(self) -> float:
        """Seconds since the start of the last renewal that succeeded."""
        return time.monotonic() - self.renewed

    def close(self) -> None:
        self._done.set()

    def renew_now(self) -> None:
        """One renewal (also called by the launcher before it starts the workload)."""
        started = time.monotonic()
        close_old_connections()
        try:
            lease = lifecycle.renew(self.node_id, self.claim)
        except Exception as exc:
            # One line per outage, not a traceback per renewal.
            if self._failing_since is None:
                self._failing_since = started
                log.warning("lease renewal of %s failed: %s", self.label, exc)
            return
        if self._failing_since is not None:
            log.warning(
                "lease renewal of %s works again after %.1f s",
                self.label,
                started - self._failing_since,
            )
            self._failing_since = None
        if not lease.held:
            if not self.fenced.is_set():
                log.warning("%s was fenced: its lease is no longer this run's", self.label)
            self.fenced.set()
            return
        self.renewed = started
        self.stop = lease.stop
        if self.on_renewed is not None:
            self.on_renewed()

    def run(self) -> None:
        try:
            while not self.fenced.is_set() and not self._done.wait(
                settings.JOB_LEASE_RENEW_INTERVAL
            ):
                self.renew_now()
        finally:
            connection.close()
