"""Per-GPU readings through NVML: every field the telemetry shows, failure-safe.

``GpuSampler(gateway).sample()`` returns one dict per GPU (``GpuReading``). A field the
GPU or driver does not have reads as None ("n/a") and is not asked again; a GPU whose
calls start failing (GPU is lost, unknown error) is reported with ``ok: False`` and the
error, while the other GPUs go on; a missing library yields no GPUs (the gateway's
``status`` says why, once). Static facts (name, UUID, PCI bus id, power limit, MIG
layout) are re-read every ``static_every`` seconds; the slower counters (ECC, remapped
rows, PCIe replays) every ``slow_every`` and PCIe throughput (which blocks ~20 ms per
call on some GPUs) every ``pcie_every``. No Django here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, TypedDict

from monitoring.nvml import NOT_FOUND, Nvml, error_code, is_unsupported, text
from monitoring.xid import XidWatcher

THROTTLE_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
    0x100: "display_clock",
}
FI_DEV_MEMORY_TEMP = 82  # NVML_FI_DEV_MEMORY_TEMP


class ProcessReading(TypedDict):
    pid: int
    mem: int | None  # bytes of GPU memory
    sm: int | None  # % of the SMs, when NVML has a recent sample


class MigReading(TypedDict):
    index: int
    uuid: str
    name: str
    gpu_instance: int | None
    compute_instance: int | None
    mem_total: int | None
    mem_used: int | None
    processes: list[ProcessReading]


class GpuReading(TypedDict):
    index: int
    uuid: str
    name: str
    pci_bus_id: str
    ok: bool
    error: str | None
    util_gpu: int | None
    util_mem: int | None
    enc_util: int | None
    dec_util: int | None
    mem_total: int | None
    mem_used: int | None
    mem_free: int | None
    mem_reserved: int | None
    temp_gpu: int | None
    temp_mem: int | None
    power_w: float | None
    power_limit_w: float | None
    energy_mj: int | None
    sm_clock: int | None
    mem_clock: int | None
    pstate: int | None
    fan: int | None
    throttle: list[str] | None
    ecc_corrected: int | None
    ecc_uncorrected: int | None
    remapped_correctable: int | None
    remapped_uncorrectable: int | None
    remap_pending: bool | None
    remap_failure: bool | None
    pcie_tx_bps: int | None
    pcie_rx_bps: int | None
    pcie_replay: int | None
    xid: int | None
    xid_count: int
    processes: list[ProcessReading]
    mig: list[MigReading] | None
    unsupported: list[str]


class _Failed(Exception):
    """A call on this GPU failed for a reason other than "not supported"."""


@dataclass
class _Device:
    index: int
    handle: Any
    uuid: str = ""
    name: str = ""
    pci_bus_id: str = ""
    power_limit_w: float | None = None
    unsupported: set[str] = field(default_factory=set)
    mig: list[tuple[int, Any, str, str, int | None, int | None]] = field(default_factory=list)
    slow: dict[str, Any] = field(default_factory=dict)
    slow_at: float = float("-inf")
    pcie: tuple[int | None, int | None] = (None, None)
    pcie_at: float = float("-inf")
    proc_ts: int = 0


def _empty(dev: _Device) -> GpuReading:
    return GpuReading(
        index=dev.index, uuid=dev.uuid, name=dev.name, pci_bus_id=dev.pci_bus_id, ok=True,
        error=None, util_gpu=None, util_mem=None, enc_util=None, dec_util=None, mem_total=None,
        mem_used=None, mem_free=None, mem_reserved=None, temp_gpu=None, temp_mem=None,
        power_w=None, power_limit_w=dev.power_limit_w, energy_mj=None, sm_clock=None,
        mem_clock=None, pstate=None, fan=None, throttle=None, ecc_corrected=None,
        ecc_uncorrected=None, remapped_correctable=None, remapped_uncorrectable=None,
        remap_pending=None, remap_failure=None, pcie_tx_bps=None, pcie_rx_bps=None,
        pcie_replay=None, xid=None, xid_count=0, processes=[], mig=None, unsupported=[],
    )  # fmt: skip


class GpuSampler:
    """Reads every GPU of this host through one ``Nvml`` gateway."""

    def __init__(
        self,
        gateway: Nvml,
        *,
        xids: XidWatcher | None = None,
        static_every: float = 60.0,
        slow_every: float = 5.0,
        pcie_every: float = 1.0,
    ) -> None:
        self.nv = gateway
        self.xids = xids
        self.static_every = static_every
        self.slow_every = slow_every
        self.pcie_every = pcie_every
        self._devices: list[_Device] = []
        self._static_at = float("-inf")

    # --- reading one field ---------------------------------------------------------------

    def _read(self, dev: _Device, key: str, name: str, *args: Any, handle: Any = None) -> Any:
        """``nvml<name>(handle, *args)``; None when unsupported (remembered) or not found."""
        if key in dev.unsupported:
            return None
        fn = self.nv.function(name)
        if fn is None:
            dev.unsupported.add(key)
            return None
        try:
            return fn(dev.handle if handle is None else handle, *args)
        except Exception as exc:
            if is_unsupported(exc):
                dev.unsupported.add(key)
                return None
            if error_code(exc) == NOT_FOUND:
                return None
            raise _Failed(text(exc) or type(exc).__name__) from None

    # --- static facts --------------------------------------------------------------------

    def devices(self) -> list[_Device]:
        now = time.monotonic()
        if now - self._static_at >= self.static_every:
            self._refresh(now)
        return self._devices

    def _refresh(self, now: float) -> None:
        self._static_at = now
        if not self.nv.available:
            self._devices = []
            return
        nv = self.nv.module
        count = self.nv.call(nv.nvmlDeviceGetCount, default=0) or 0
        known = {d.index: d for d in self._devices}
        devices = []
        for index in range(count):
            handle = self.nv.call(nv.nvmlDeviceGetHandleByIndex, index)
            if handle is None:
                continue
            dev = known.get(index) or _Device(index=index, handle=handle)
            dev.handle = handle
            dev.uuid = text(
                self.nv.call(nv.nvmlDeviceGetUUID, handle) or dev.uuid or f"gpu-{index}"
            )
            dev.name = text(self.nv.call(nv.nvmlDeviceGetName, handle) or dev.name or "NVIDIA GPU")
            pci = self.nv.call(nv.nvmlDeviceGetPciInfo, handle)
            dev.pci_bus_id = text(getattr(pci, "busId", "") or dev.pci_bus_id)
            try:
                limit = self._read(dev, "power_limit", "nvmlDeviceGetEnforcedPowerLimit")
                dev.power_limit_w = None if limit is None else limit / 1000
                dev.mig = self._mig_layout(dev)
            except _Failed:
                pass  # the GPU fails right now; sample() reports it
            devices.append(dev)
        self._devices = devices

    def _mig_layout(self, dev: _Device) -> list[tuple[int, Any, str, str, int | None, int | None]]:
        mode = self._read(dev, "mig", "nvmlDeviceGetMigMode")
        if not mode or not mode[0]:
            return []
        layout = []
        for slot in range(self._read(dev, "mig", "nvmlDeviceGetMaxMigDeviceCount") or 0):
            handle = self._read(dev, "mig", "nvmlDeviceGetMigDeviceHandleByIndex", slot)
            if handle is None:
                continue
            nv = self.nv.module
            layout.append(
                (
                    slot,
                    handle,
                    text(self.nv.call(nv.nvmlDeviceGetUUID, handle) or f"mig-{slot}"),
                    text(self.nv.call(nv.nvmlDeviceGetName, handle) or "MIG device"),
                    self.nv.call(nv.nvmlDeviceGetGpuInstanceId, handle),
                    self.nv.call(nv.nvmlDeviceGetComputeInstanceId, handle),
                )
            )
        return layout

    # --- a sample ------------------------------------------------------------------------

    def sample(self) -> list[GpuReading]:
        """One reading per GPU; never raises."""
        now = time.monotonic()
        readings = []
        for dev in self.devices():
            reading = _empty(dev)
            try:
                self._fill(dev, reading, now)
            except _Failed as exc:
                reading["ok"] = False
                reading["error"] = str(exc)
            except Exception as exc:  # a library surprise must not stop the agent
                reading["ok"] = False
                reading["error"] = f"{type(exc).__name__}: {exc}"
            if self.xids is not None:
                reading["xid"], reading["xid_count"] = self.xids.last(dev.index)
            reading["unsupported"] = sorted(dev.unsupported)
            readings.append(reading)
        return readings

    def _fill(self, dev: _Device, r: GpuReading, now: float) -> None:
        util = self._read(dev, "utilization", "nvmlDeviceGetUtilizationRates")
        if util is not None:
            r["util_gpu"], r["util_mem"] = int(util.gpu), int(util.memory)
        enc = self._read(dev, "enc_util", "nvmlDeviceGetEncoderUtilization")
        dec = self._read(dev, "dec_util", "nvmlDeviceGetDecoderUtilization")
        r["enc_util"] = None if enc is None else int(enc[0])
        r["dec_util"] = None if dec is None else int(dec[0])
        v2 = self.nv.constant("nvmlMemory_v2")
        mem = self._read(dev, "memory_v2", "nvmlDeviceGetMemoryInfo", v2) if v2 else None
        if mem is None:
            mem = self._read(dev, "memory", "nvmlDeviceGetMemoryInfo")
        if mem is not None:
            r["mem_total"], r["mem_used"], r["mem_free"] = (
                int(mem.total),
                int(mem.used),
                int(mem.free),
            )
            reserved = getattr(mem, "reserved", None)
            r["mem_reserved"] = None if reserved is None else int(reserved)
        r["temp_gpu"] = self._read(dev, "temp_gpu", "nvmlDeviceGetTemperature", 0)
        r["temp_mem"] = self._memory_temp(dev)
        power = self._read(dev, "power", "nvmlDeviceGetPowerUsage")
        r["power_w"] = None if power is None else power / 1000
        r["energy_mj"] = self._read(dev, "energy", "nvmlDeviceGetTotalEnergyConsumption")
        r["sm_clock"] = self._read(dev, "sm_clock", "nvmlDeviceGetClockInfo", 1)
        r["mem_clock"] = self._read(dev, "mem_clock", "nvmlDeviceGetClockInfo", 2)
        r["pstate"] = self._read(dev, "pstate", "nvmlDeviceGetPerformanceState")
        r["fan"] = self._read(dev, "fan", "nvmlDeviceGetFanSpeed")
        mask = self._read(dev, "throttle", "nvmlDeviceGetCurrentClocksEventReasons")
        if mask is None and "throttle" in dev.unsupported:
            dev.unsupported.discard("throttle")  # older drivers: the older name
            mask = self._read(dev, "throttle_v1", "nvmlDeviceGetCurrentClocksThrottleReasons")
            if mask is None:
                dev.unsupported.add("throttle")
        if mask is not None:
            r["throttle"] = [name for bit, name in THROTTLE_REASONS.items() if mask & bit]
        if now - dev.slow_at >= self.slow_every:
            dev.slow_at = now
            dev.slow = self._slow(dev)
        r.update(dev.slow)  # type: ignore[typeddict-item]
        if now - dev.pcie_at >= self.pcie_every:
            dev.pcie_at = now
            tx = self._read(dev, "pcie", "nvmlDeviceGetPcieThroughput", 0)
            rx = self._read(dev, "pcie", "nvmlDeviceGetPcieThroughput", 1)
            dev.pcie = (None if tx is None else tx * 1024, None if rx is None else rx * 1024)
        r["pcie_tx_bps"], r["pcie_rx_bps"] = dev.pcie
        r["processes"] = self._processes(dev)
        if dev.mig:
            r["mig"] = [self._mig_reading(dev, entry) for entry in dev.mig]

    def _memory_temp(self, dev: _Device) -> int | None:
        values = self._read(dev, "temp_mem", "nvmlDeviceGetFieldValues", [FI_DEV_MEMORY_TEMP])
        if not values:
            return None
        value = values[0]
        code = getattr(value, "nvmlReturn", 0)
        if code:
            if code in (3, 13):
                dev.unsupported.add("temp_mem")
            return None
        return int(value.value.uiVal)

    def _slow(self, dev: _Device) -> dict[str, Any]:
        ecc_c = self._read(dev, "ecc", "nvmlDeviceGetTotalEccErrors", 0, 0)
        ecc_u = self._read(dev, "ecc", "nvmlDeviceGetTotalEccErrors", 1, 0)
        rows = self._read(dev, "remapped", "nvmlDeviceGetRemappedRows")
        return {
            "ecc_corrected": ecc_c,
            "ecc_uncorrected": ecc_u,
            "remapped_correctable": None if rows is None else int(rows[0]),
            "remapped_uncorrectable": None if rows is None else int(rows[1]),
            "remap_pending": None if rows is None else bool(rows[2]),
            "remap_failure": None if rows is None else bool(rows[3]),
            "pcie_replay": self._read(dev, "pcie_replay", "nvmlDeviceGetPcieReplayCounter"),
        }

    def _processes(self, dev: _Device, handle: Any = None) -> list[ProcessReading]:
        key = "processes" if handle is None else "mig_processes"
        procs = self._read(dev, key, "nvmlDeviceGetComputeRunningProcesses", handle=handle)
        if not procs:
            return []
        sm: dict[int, int] = {}
        if handle is None:
            samples = self._read(
                dev, "process_util", "nvmlDeviceGetProcessUtilization", dev.proc_ts
            )
            for s in samples or []:
                sm[int(s.pid)] = max(sm.get(int(s.pid), 0), int(s.smUtil))
                dev.proc_ts = max(dev.proc_ts, int(s.timeStamp))
        return [
            ProcessReading(
                pid=int(p.pid),
                mem=None if getattr(p, "usedGpuMemory", None) is None else int(p.usedGpuMemory),
                sm=sm.get(int(p.pid)),
            )
            for p in procs
        ]

    def _mig_reading(self, dev: _Device, entry: tuple) -> MigReading:
        slot, handle, uuid, name, gi, ci = entry
        try:
            mem = self._read(dev, "mig_memory", "nvmlDeviceGetMemoryInfo", handle=handle)
            procs = self._processes(dev, handle)
        except _Failed:
            mem, procs = None, []
        return MigReading(
            index=slot,
            uuid=uuid,
            name=name,
            gpu_instance=gi,
            compute_instance=ci,
            mem_total=None if mem is None else int(mem.total),
            mem_used=None if mem is None else int(mem.used),
            processes=procs,
        )
