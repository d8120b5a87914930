"""A worker host's presence: register when the Celery worker is ready, heartbeat from a
thread of its main process, and say goodbye on a clean shutdown."""

from __future__ import annotations

import logging
import os
import threading

from celery.signals import worker_ready, worker_shutdown, worker_shutting_down
from django.conf import settings
from django.db import close_old_connections, connection

from controlplane.cluster import services
from monitoring import agent as telemetry
from workers import host

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Marks this host alive every ``CP_WORKER_HEARTBEAT_INTERVAL`` seconds."""

    def __init__(self, node: str) -> None:
        super().__init__(name="cp-heartbeat", daemon=True)
        self.node = node
        self.stopping = threading.Event()

    def beat(self) -> None:
        """One heartbeat; registers again if the host's row is gone (a new id, which the
        telemetry agent then reports under)."""
        if not services.heartbeat(settings.HOSTNAME):
            log.warning("worker row missing or marked stopped; registering again")
            worker = services.register_worker(host.collect(self.node))
            telemetry.rebind(worker.pk)

    def run(self) -> None:
        while not self.stopping.wait(settings.WORKER_HEARTBEAT_INTERVAL):
            close_old_connections()
            try:
                self.beat()
            except Exception:  # the database may be briefly away; try again next beat
                log.exception("heartbeat failed")
        connection.close()


_heartbeat: Heartbeat | None = None


@worker_ready.connect
def on_worker_ready(sender=None, **kwargs) -> None:
    global _heartbeat
    node = getattr(sender, "hostname", "") or ""
    worker = services.register_worker(host.collect(node))
    log.info(
        "registered worker %s (%s, %d GPU(s), NVML: %s) on queue %s",
        worker.name,
        worker.address,
        worker.gpus.count(),
        worker.nvml_status,
        worker.queue,
    )
    _heartbeat = Heartbeat(node)
    _heartbeat.start()
    try:
        telemetry.start(worker.pk, worker.name)
    except Exception:  # telemetry must never keep a worker from working
        log.exception("could not start the telemetry agent")


def _go_offline() -> None:
    """Stop heartbeating and show this host offline (idempotent)."""
    if _heartbeat is not None:
        _heartbeat.stopping.set()
    telemetry.stop()
    try:
        close_old_connections()
        services.mark_stopped(settings.HOSTNAME, pid=os.getpid())
    except Exception:
        log.exception("could not mark this worker stopped")


@worker_shutting_down.connect
def on_worker_shutting_down(sender=None, **kwargs) -> None:
    """Stop this host's jobs gracefully (they checkpoint) and let them requeue elsewhere;
    offline at once, so the scheduler places nothing more here while they stop."""
    from workers.launcher import DRAINING

    DRAINING.set()
    _go_offline()


@worker_shutdown.connect
def on_worker_shutdown(sender=None, **kwargs) -> None:
    _go_offline()
