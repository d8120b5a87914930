"""XID errors from NVML's event set, read by a thread of their own.

``nvmlEventSetWait`` blocks, so it never runs in the sampling loop: ``XidWatcher`` waits on
the event set (half a second at a time, so it stops promptly) and keeps, per GPU index,
the last critical XID and how many were seen. The sampler reads them with ``last()``.
A GPU that cannot register for events (unsupported, MIG, no permission) is skipped.
"""

from __future__ import annotations

import logging
import threading
import time

from monitoring.nvml import TIMEOUT, Nvml, error_code, text

log = logging.getLogger(__name__)
XID_CRITICAL = 0x8  # nvmlEventTypeXidCriticalError


class XidWatcher(threading.Thread):
    def __init__(self, gateway: Nvml, wait_ms: int = 500) -> None:
        super().__init__(name="cp-telemetry-xid", daemon=True)
        self.nv = gateway
        self.wait_ms = wait_ms
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._seen: dict[int, tuple[int, int, float]] = {}  # index -> (xid, count, when)
        self.registered: list[int] = []

    def last(self, index: int) -> tuple[int | None, int]:
        """(the last XID of GPU ``index`` or None, how many were seen)."""
        with self._lock:
            seen = self._seen.get(index)
        return (None, 0) if seen is None else (seen[0], seen[1])

    def record(self, index: int, xid: int) -> None:
        with self._lock:
            _, count, _ = self._seen.get(index, (0, 0, 0.0))
            self._seen[index] = (xid, count + 1, time.time())
        log.warning("GPU %s reported XID %s", index, xid)

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        if not self.nv.available:
            return
        nv = self.nv.module
        event_set = self.nv.call(nv.nvmlEventSetCreate)
        if event_set is None:
            return
        by_uuid: dict[str, int] = {}
        for index in range(self.nv.call(nv.nvmlDeviceGetCount, default=0) or 0):
            handle = self.nv.call(nv.nvmlDeviceGetHandleByIndex, index)
            if handle is None:
                continue
            try:
                nv.nvmlDeviceRegisterEvents(handle, XID_CRITICAL, event_set)
            except Exception as exc:
                log.info("GPU %s: no XID events (%s)", index, text(exc))
                continue
            by_uuid[text(self.nv.call(nv.nvmlDeviceGetUUID, handle) or "")] = index
            self.registered.append(index)
        try:
            while self.registered and not self.stopping.is_set():
                try:
                    event = nv.nvmlEventSetWait_v2(event_set, self.wait_ms)
                except Exception as exc:
                    if error_code(exc) != TIMEOUT:
                        log.debug("XID wait failed: %s", exc)
                        self.stopping.wait(self.wait_ms / 1000)
                    continue
                uuid = text(self.nv.call(nv.nvmlDeviceGetUUID, event.device) or "")
                index = by_uuid.get(uuid)
                if index is not None and event.eventType & XID_CRITICAL:
                    self.record(index, int(event.eventData))
        finally:
            self.nv.call(nv.nvmlEventSetFree, event_set)
