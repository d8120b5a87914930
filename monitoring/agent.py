"""The telemetry agent: a thread of every worker process (never an async consumer) that
samples the host and its GPUs every ``CP_TELEMETRY_INTERVAL`` seconds and sends each
sample to the channel layer (its host's group, the cluster's, and each holder's), to the
latest store, and -- downsampled -- to the database, with each job's usage and energy.

It measures itself: the CPU time and wall time of each sample and of the whole tick, and
its share of one core over the last minute, reported in every frame (``agent``), on the
host page and in ``/metrics``. A tick that overruns the interval is counted, and the next
one starts on the next interval boundary instead of piling up. Started and stopped by
``workers.presence`` through ``start()`` and ``stop()``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections, connection

from monitoring import attribution, frames, services, store
from monitoring.accounting import EnergyMeter, HistoryBuckets, Usage
from monitoring.gpu_sampler import GpuSampler
from monitoring.host_sampler import HostSampler
from monitoring.nvml import Nvml, nvml
from monitoring.xid import XidWatcher

log = logging.getLogger(__name__)
LAYER = "telemetry"
HOLDINGS_REFRESH = 1.0  # seconds between reads of who holds which GPU (one indexed query)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class AgentStats:
    """The agent's own cost over a sliding window of ticks."""

    def __init__(self, window: int) -> None:
        self.ticks: deque[tuple[float, float, float, float]] = deque(maxlen=window)
        self.started = time.monotonic()
        self.late = 0
        self.errors = 0
        self.publish_errors = 0
        self.count = 0

    def record(self, sample_wall: float, sample_cpu: float, wall: float, cpu: float) -> None:
        self.ticks.append((sample_wall, sample_cpu, wall, cpu))
        self.count += 1

    def report(self, interval: float) -> dict[str, Any]:
        if not self.ticks:
            return {"ticks": 0, "late": self.late}
        n = len(self.ticks)
        span = max(interval * n, 1e-9)
        return {
            "ticks": self.count,
            "sample_ms": round(1000 * sum(t[0] for t in self.ticks) / n, 3),
            "sample_cpu_ms": round(1000 * sum(t[1] for t in self.ticks) / n, 3),
            "tick_ms": round(1000 * sum(t[2] for t in self.ticks) / n, 3),
            "tick_cpu_ms": round(1000 * sum(t[3] for t in self.ticks) / n, 3),
            "cpu_percent": round(100 * sum(t[3] for t in self.ticks) / span, 3),
            "late": self.late,
            "errors": self.errors,
            "publish_errors": self.publish_errors,
        }


class TelemetryAgent(threading.Thread):
    def __init__(
        self,
        worker_id: int,
        worker_name: str,
        *,
        interval: float | None = None,
        gateway: Nvml | None = None,
        publish: bool = True,
        persist: bool = True,
    ) -> None:
        super().__init__(name="cp-telemetry", daemon=True)
        self.worker_id = worker_id
        self.worker_name = worker_name
        self.interval = interval or settings.TELEMETRY_INTERVAL
        self.nv = gateway or nvml
        self.publish_enabled = publish
        self.persist = persist
        self.stopping = threading.Event()
        self.stats = AgentStats(window=max(10, int(60 / self.interval)))
        self.seq = 0
        self.host = HostSampler()
        self.xids: XidWatcher | None = None
        self.gpus: GpuSampler | None = None
        self.meter = EnergyMeter()
        self.history = HistoryBuckets(settings.TELEMETRY_HISTORY_STEP)
        self.usage: dict[int, Usage] = {}
        self._holdings: list[frames.Holding] = []
        self._holdings_at = float("-inf")
        self._last_t: float | None = None
        self._recent_every = max(1, round(1.0 / self.interval))
        self._loop: asyncio.AbstractEventLoop | None = None
        self.last_frame: dict[str, Any] | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def setup(self) -> None:
        self.nv.start()
        if self.nv.available:
            self.xids = XidWatcher(self.nv)
            self.xids.start()
        self.gpus = GpuSampler(self.nv, xids=self.xids)
        self._loop = asyncio.new_event_loop()

    def run(self) -> None:
        self.setup()
        next_at = time.monotonic()
        try:
            while not self.stopping.is_set():
                try:
                    self.tick()
                except Exception:
                    self.stats.errors += 1
                    if self.stats.errors <= 3 or self.stats.errors % 100 == 0:
                        log.exception("telemetry tick failed (%d so far)", self.stats.errors)
                next_at += self.interval
                delay = next_at - time.monotonic()
                if delay < 0:  # overran: skip to the next boundary, never pile up
                    self.stats.late += 1
                    next_at += -(delay // self.interval) * self.interval
                    delay = next_at - time.monotonic()
                self.stopping.wait(max(0.0, delay))
        finally:
            self.close()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def close(self) -> None:
        """Write what is pending (the current bucket, usage) and release resources."""
        if self.persist:
            try:
                close_old_connections()
                bucket = self.history.flush()
                if bucket:
                    services.record_history(self.worker_id, bucket)
                services.record_usage(self.worker_name, self.usage)
            except Exception:
                log.warning("could not write the last telemetry bucket", exc_info=True)
            connection.close()
        if self.xids is not None:
            self.xids.stop()
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    # --- one tick ------------------------------------------------------------------------

    def holdings(self, now: float) -> list[frames.Holding]:
        if now - self._holdings_at >= max(HOLDINGS_REFRESH, self.interval):
            self._holdings_at = now
            try:
                close_old_connections()
                self._holdings = attribution.holdings(self.worker_id)
            except Exception:
                log.warning("could not read who holds this host's GPUs", exc_info=True)
        return self._holdings

    def sample(self) -> dict[str, Any]:
        """Read everything and build this tick's frame (no I/O besides the readings)."""
        if self.gpus is None:
            self.setup()
        assert self.gpus is not None
        now = time.time()
        dt = self.interval if self._last_t is None else min(now - self._last_t, 10 * self.interval)
        self._last_t = now
        host = self.host.sample()
        readings = self.gpus.sample() if self.nv.available else []
        holdings = self.holdings(time.monotonic())
        gpus, held = frames.attribute(readings, holdings)  # type: ignore[arg-type]
        energy = {g["index"]: self.meter.joules(g, dt) for g in gpus if g["ok"]}
        holders = self._holder_figures(holdings, gpus, held, energy, now, dt)
        self.seq += 1
        return {
            "type": "sample",
            "v": frames.SCHEMA_VERSION,
            "host": {"id": self.worker_id, "name": self.worker_name},
            "t": round(now, 3),
            "seq": self.seq,
            "interval": self.interval,
            "nvml": self.nv.status,
            "host_metrics": host,
            "gpus": gpus,
            "holders": holders,
            "_energy": {i: j for i, (j, _) in energy.items()},
        }

    def _holder_figures(self, holdings, gpus, held, energy, now, dt) -> list[dict[str, Any]]:
        by_index = {g["index"]: g for g in gpus}
        stamp = datetime.fromtimestamp(now, tz=UTC)
        figures = []
        new = [h.id for h in holdings if h.kind == "job" and h.id not in self.usage]
        if new and self.persist:
            try:
                self.usage.update(services.load_usage(self.worker_name, new))
            except Exception:
                log.warning("could not load job usage", exc_info=True)
        for holding in holdings:
            mine = [by_index[i] for i in held.get((holding.kind, holding.id), []) if i in by_index]
            ok = [g for g in mine if g["ok"]]
            key = [holding.kind, holding.id]
            proc_mem = sum(
                p["mem"] or 0 for g in mine for p in g["processes"] if p["holder"] == key
            )
            mem = proc_mem or sum(g["mem_used"] or 0 for g in ok)
            procs = self.host.processes(holding.pids)
            entry = {
                **holding.label(),
                "gpus": [g["index"] for g in mine],
                "util": round(sum(g["util_gpu"] or 0 for g in ok) / len(ok), 1) if ok else None,
                "mem_used": mem,
                "power_w": round(sum(g["power_w"] or 0 for g in ok), 1) if ok else None,
                "cpu": procs["cpu"],
                "rss": procs["rss"],
                "pids": procs["alive"],
            }
            if holding.kind == "job":
                usage = self.usage.setdefault(holding.id, Usage())
                usage.add(stamp, dt, ok, energy, mem, procs["cpu"], procs["rss"])
                entry["energy_j"] = round(usage.joules, 3)
                entry["energy_source"] = usage.energy_source
            figures.append(entry)
        self.host.forget_except({p for h in holdings for p in h.pids})
        return figures

    def tick(self) -> dict[str, Any]:
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        frame = self.sample()
        energy = frame.pop("_energy")
        sample_cpu, sample_wall = time.thread_time() - cpu0, time.perf_counter() - wall0
        frame["agent"] = self.stats.report(self.interval)
        text = _dumps(frame)
        if self.publish_enabled:
            self.publish(frame, text)
        if self.persist:
            self.write(frame, energy)
        self.stats.record(
            sample_wall, sample_cpu, time.perf_counter() - wall0, time.thread_time() - cpu0
        )
        self.last_frame = frame
        return frame

    def publish(self, frame: dict[str, Any], text: str) -> None:
        message = {
            "type": "telemetry.sample",
            "host": self.worker_id,
            "seq": frame["seq"],
            "text": text,
            "projects": frames.projects_in(frame),
        }
        sends = [(frames.CLUSTER_GROUP, message), (frames.host_group(self.worker_id), message)]
        for holder in frame["holders"]:
            narrowed = frames.narrow(frame, holder["kind"], holder["id"])
            sends.append(
                (
                    frames.group(holder["kind"], holder["id"]),
                    {
                        "type": "telemetry.sample",
                        "host": self.worker_id,
                        "seq": frame["seq"],
                        "text": _dumps(narrowed),
                        "projects": [holder["project_id"]],
                    },
                )
            )
        compact = _dumps(frames.compact(frame)) if frame["seq"] % self._recent_every == 0 else None
        try:
            store.put(self.worker_id, text, compact)
        except Exception:
            self.stats.publish_errors += 1
            log.debug("could not store the latest sample", exc_info=True)
        layer = get_channel_layer(LAYER)
        if layer is None or self._loop is None:
            return

        async def send_all() -> None:
            await asyncio.wait_for(
                asyncio.gather(*(layer.group_send(g, m) for g, m in sends)),
                timeout=max(2.0, 5 * self.interval),
            )

        try:
            self._loop.run_until_complete(send_all())
        except Exception:
            self.stats.publish_errors += 1
            log.debug("could not publish a telemetry sample", exc_info=True)

    def write(self, frame: dict[str, Any], energy: dict[int, float | None]) -> None:
        bucket = self.history.add(frame["t"], frame["host_metrics"], frame["gpus"], energy)
        if bucket is None:
            return
        try:
            close_old_connections()
            services.record_history(self.worker_id, bucket)
            services.record_usage(self.worker_name, self.usage)
        except Exception:
            self.stats.errors += 1
            log.warning("could not write telemetry history", exc_info=True)
        held = {h["id"] for h in frame["holders"] if h["kind"] == "job"}
        for job_id in [j for j, u in self.usage.items() if j not in held and not u.dirty]:
            del self.usage[job_id]


_agent: TelemetryAgent | None = None


def start(worker_id: int, worker_name: str) -> TelemetryAgent | None:
    """Start this process's agent (once); None when telemetry is switched off."""
    global _agent
    if not settings.TELEMETRY_ENABLED:
        return None
    if _agent is not None and _agent.is_alive():
        return _agent
    _agent = TelemetryAgent(worker_id, worker_name)
    _agent.start()
    log.info("telemetry agent started: every %g s (NVML: %s)", _agent.interval, _agent.nv.status)
    return _agent


def rebind(worker_id: int) -> None:
    """This host registered again under a new id (its row was removed meanwhile): the
    running agent reports under the new one from its next sample."""
    if _agent is not None and _agent.worker_id != worker_id:
        log.info("telemetry agent: host id %s -> %s", _agent.worker_id, worker_id)
        _agent.worker_id = worker_id
        _agent._holdings_at = float("-inf")  # re-read which jobs hold its devices


def stop() -> None:
    global _agent
    if _agent is not None:
        _agent.stop()
        _agent = None
