"""What the agent adds up between database writes: energy per GPU, history buckets (mean
and max per ``CP_TELEMETRY_HISTORY_STEP`` seconds) and each job's usage on this host.

Pure bookkeeping, no I/O: the agent feeds it every sample and hands what it returns to
``monitoring.services`` to write in bulk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

GPU_FIELDS = {  # history column stem -> reading field
    "util": "util_gpu",
    "mem_util": "util_mem",
    "mem_used": "mem_used",
    "power": "power_w",
    "temp": "temp_gpu",
    "sm_clock": "sm_clock",
    "mem_clock": "mem_clock",
}
GPU_MAX = ("util", "mem_used", "power", "temp")
HOST_FIELDS = {
    "cpu": "cpu",
    "mem_used": "mem_used",
    "load1": None,
    "net_rx": "net_rx_bps",
    "net_tx": "net_tx_bps",
    "disk_read": "disk_read_bps",
    "disk_write": "disk_write_bps",
}
HOST_MAX = ("cpu", "mem_used")


class EnergyMeter:
    """Joules per GPU between samples: the NVML energy counter's difference, or power x
    time where the GPU has no counter (or it went backwards, e.g. after a driver reload)."""

    def __init__(self) -> None:
        self._last: dict[int, int] = {}

    def joules(self, gpu: dict[str, Any], dt: float) -> tuple[float | None, str]:
        counter = gpu.get("energy_mj")
        index = gpu["index"]
        if counter is not None:
            before = self._last.get(index)
            self._last[index] = counter
            if before is not None and counter >= before:
                return (counter - before) / 1000.0, "counter"
            if before is None:
                return None, "counter"  # the first reading only starts the meter
        power = gpu.get("power_w")
        if power is None:
            return None, "none"
        return power * dt, "power"


@dataclass
class _Acc:
    n: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    maxes: dict[str, float] = field(default_factory=dict)
    energy_j: float | None = None
    labels: dict[str, Any] = field(default_factory=dict)

    def add(self, values: dict[str, float | None], max_of: tuple[str, ...]) -> None:
        self.n += 1
        for key, value in values.items():
            if value is None:
                continue
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1
            if key in max_of:
                self.maxes[key] = max(self.maxes.get(key, value), value)

    def mean(self, key: str) -> float | None:
        count = self.counts.get(key)
        return None if not count else self.sums[key] / count


class HistoryBuckets:
    """Mean/max of each GPU and the host over aligned buckets of ``step`` seconds."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.start: float | None = None
        self.gpus: dict[str, _Acc] = {}
        self.host = _Acc()

    def add(
        self,
        t: float,
        host: dict[str, Any],
        gpus: list[dict[str, Any]],
        energy: dict[int, float | None],
    ) -> dict[str, Any] | None:
        """Add a sample; returns the finished bucket when ``t`` starts a new one."""
        start = t - t % self.step
        done = None
        if self.start is not None and start != self.start:
            done = self.flush()
        self.start = start
        values = {
            k: host.get(f) if f else (host.get("load") or [None])[0] for k, f in HOST_FIELDS.items()
        }
        self.host.add(values, HOST_MAX)
        self.host.labels["mem_total"] = host.get("mem_total")
        for gpu in gpus:
            if not gpu.get("ok", True):
                continue
            acc = self.gpus.setdefault(gpu["uuid"], _Acc())
            acc.add({k: gpu.get(f) for k, f in GPU_FIELDS.items()}, GPU_MAX)
            joules = energy.get(gpu["index"])
            if joules is not None:
                acc.energy_j = (acc.energy_j or 0.0) + joules
            holder = gpu.get("holder") or {}
            acc.labels = {
                "index": gpu["index"],
                "job_id": holder.get("id") if holder.get("kind") == "job" else None,
                "project_id": holder.get("project_id"),
            }
        return done

    def flush(self) -> dict[str, Any] | None:
        """The current bucket as rows to write (and a fresh bucket), or None if empty."""
        if self.start is None or self.host.n == 0:
            return None
        t = datetime.fromtimestamp(self.start, tz=UTC)
        gpu_rows = []
        for uuid, acc in self.gpus.items():
            gpu_rows.append(
                {
                    "uuid": uuid,
                    "index": acc.labels.get("index", 0),
                    "t": t,
                    "step": self.step,
                    "n": acc.n,
                    **{f"{k}_mean": acc.mean(k) for k in GPU_FIELDS},
                    **{f"{k}_max": acc.maxes.get(k) for k in GPU_MAX},
                    "energy_j": acc.energy_j,
                    "job_id": acc.labels.get("job_id"),
                    "project_id": acc.labels.get("project_id"),
                }
            )
        for row in gpu_rows:
            if row["mem_used_max"] is not None:
                row["mem_used_max"] = int(row["mem_used_max"])
        host = self.host
        host_row = {
            "t": t,
            "step": self.step,
            "n": host.n,
            "cpu_mean": host.mean("cpu"),
            "cpu_max": host.maxes.get("cpu"),
            "mem_used_mean": host.mean("mem_used"),
            "mem_used_max": None if "mem_used" not in host.maxes else int(host.maxes["mem_used"]),
            "mem_total": host.labels.get("mem_total"),
            "load1_mean": host.mean("load1"),
            "net_rx_mean": host.mean("net_rx"),
            "net_tx_mean": host.mean("net_tx"),
            "disk_read_mean": host.mean("disk_read"),
            "disk_write_mean": host.mean("disk_write"),
        }
        self.gpus, self.host = {}, _Acc()
        return {"gpus": gpu_rows, "host": host_row}


@dataclass
class Usage:
    """A job's running totals on this host (written as absolute values, so a rewrite is
    harmless and a restarted agent continues from the row)."""

    joules: float = 0.0
    energy_source: str = "counter"
    gpu_seconds: float = 0.0
    util_seconds: float = 0.0
    mem_peak: int = 0
    power_peak: float = 0.0
    cpu_seconds: float = 0.0
    rss_peak: int = 0
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    dirty: bool = False

    def as_fields(self) -> dict[str, Any]:
        return {
            "joules": self.joules,
            "energy_source": self.energy_source,
            "gpu_seconds": self.gpu_seconds,
            "util_seconds": self.util_seconds,
            "mem_peak": self.mem_peak,
            "power_peak": self.power_peak,
            "cpu_seconds": self.cpu_seconds,
            "rss_peak": self.rss_peak,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
        }

    def add(
        self,
        now: datetime,
        dt: float,
        gpus: list[dict[str, Any]],
        energy: dict[int, tuple[float | None, str]],
        mem: int,
        cpu_percent: float,
        rss: int,
    ) -> None:
        self.first_seen = self.first_seen or now
        self.last_seen = now
        self.dirty = True
        power = 0.0
        for gpu in gpus:
            joules, source = energy.get(gpu["index"], (None, "none"))
            if joules is not None:
                self.joules += joules
                if source == "power":
                    self.energy_source = "power"
            self.gpu_seconds += dt
            self.util_seconds += (gpu.get("util_gpu") or 0) * dt
            power += gpu.get("power_w") or 0.0
        self.power_peak = max(self.power_peak, power)
        self.mem_peak = max(self.mem_peak, mem)
        self.cpu_seconds += cpu_percent / 100.0 * dt
        self.rss_peak = max(self.rss_peak, rss)
