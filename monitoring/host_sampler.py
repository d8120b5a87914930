"""Host readings through psutil: CPU (total and per core), load, memory, swap, disk and
network throughput, and the CPU and memory of given processes (a job's).

Rates and CPU percentages are computed between two calls of ``sample()`` from the
counters psutil reads (never from psutil's process-wide ``cpu_percent`` state, which
other code could share). The loopback interface is left out of network throughput.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import TypedDict

import psutil


class HostReading(TypedDict):
    cpu: float  # % of all cores
    cpu_per_core: list[float]
    cpu_count: int
    load: list[float]  # 1, 5, 15 min
    mem_total: int
    mem_used: int
    mem_available: int
    swap_total: int
    swap_used: int
    disk_read_bps: float | None
    disk_write_bps: float | None
    net_rx_bps: float | None
    net_tx_bps: float | None


class ProcessUsage(TypedDict):
    cpu: float  # % of one core, summed over the processes
    rss: int
    alive: int


def _busy(times: psutil._common.pcputimes) -> tuple[float, float]:
    total = sum(times)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


def _percent(before: tuple[float, float], after: tuple[float, float]) -> float:
    busy = after[0] - before[0]
    total = after[1] - before[1]
    return 0.0 if total <= 0 else round(max(0.0, min(100.0, 100 * busy / total)), 1)


class HostSampler:
    def __init__(self) -> None:
        self._cores = [_busy(t) for t in psutil.cpu_times(percpu=True)]
        self._all = _busy(psutil.cpu_times())
        self._io_at = time.monotonic()
        self._disk = self._disk_counters()
        self._net = self._net_counters()
        self._procs: dict[int, psutil.Process] = {}

    @staticmethod
    def _disk_counters() -> tuple[int, int] | None:
        try:
            io = psutil.disk_io_counters()
        except (OSError, RuntimeError):
            return None
        return None if io is None else (io.read_bytes, io.write_bytes)

    @staticmethod
    def _net_counters() -> tuple[int, int] | None:
        try:
            nics = psutil.net_io_counters(pernic=True)
        except OSError:
            return None
        rx = sum(n.bytes_recv for name, n in nics.items() if name != "lo")
        tx = sum(n.bytes_sent for name, n in nics.items() if name != "lo")
        return rx, tx

    def sample(self) -> HostReading:
        cores = [_busy(t) for t in psutil.cpu_times(percpu=True)]
        whole = _busy(psutil.cpu_times())
        per_core = [_percent(b, a) for b, a in zip(self._cores, cores, strict=False)]
        cpu = _percent(self._all, whole)
        self._cores, self._all = cores, whole
        now = time.monotonic()
        elapsed = max(now - self._io_at, 1e-6)
        disk, net = self._disk_counters(), self._net_counters()

        def rate(new: tuple[int, int] | None, old: tuple[int, int] | None, i: int) -> float | None:
            if new is None or old is None:
                return None
            return round(max(0, new[i] - old[i]) / elapsed, 1)

        reading = HostReading(
            cpu=cpu,
            cpu_per_core=per_core,
            cpu_count=len(cores),
            load=[round(x, 2) for x in os.getloadavg()],
            mem_total=0,
            mem_used=0,
            mem_available=0,
            swap_total=0,
            swap_used=0,
            disk_read_bps=rate(disk, self._disk, 0),
            disk_write_bps=rate(disk, self._disk, 1),
            net_rx_bps=rate(net, self._net, 0),
            net_tx_bps=rate(net, self._net, 1),
        )
        vm, swap = psutil.virtual_memory(), psutil.swap_memory()
        reading.update(
            mem_total=vm.total,
            mem_used=vm.total - vm.available,
            mem_available=vm.available,
            swap_total=swap.total,
            swap_used=swap.used,
        )
        self._io_at, self._disk, self._net = now, disk, net
        return reading

    def processes(self, pids: Iterable[int]) -> ProcessUsage:
        """CPU (since the last call for each pid) and resident memory of ``pids``."""
        cpu, rss, alive = 0.0, 0, 0
        for pid in pids:
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                    proc.cpu_percent(None)  # the first call only primes it
                with proc.oneshot():
                    cpu += proc.cpu_percent(None)
                    rss += proc.memory_info().rss
                alive += 1
            except psutil.Error:
                self._procs.pop(pid, None)
        return ProcessUsage(cpu=round(cpu, 1), rss=rss, alive=alive)

    def forget_except(self, pids: set[int]) -> None:
        for pid in list(self._procs):
            if pid not in pids:
                del self._procs[pid]
