"""FAKE pynvml for tests on machines without an NVIDIA GPU. Not the real library.

Tests put this directory first on PYTHONPATH. The GPUs it pretends to have come from the
environment: ``FAKE_NVML_GPUS`` is a JSON list of objects (or a plain count). Unset,
``nvmlInit`` fails the way the real library does on a machine with no driver.

Keys of a GPU object (all optional):

- ``name``, ``memory_total`` (bytes), ``uuid``, ``pci_bus_id`` (without it the PCI info
  call answers "Not Supported", as before);
- ``unsupported``: field names that answer "Not Supported" (``fan``, ``memory_temp``,
  ``power``, ``energy``, ``ecc``, ``remapped``, ``pcie``, ``clocks``, ``pstate``,
  ``throttle``, ``utilization``, ``enc_dec``, ``processes``, ``memory_v2``,
  ``process_utilization``, ``events``), or ``true`` for all of them;
- ``fail_after``: seconds after ``nvmlInit`` from which every call on this GPU raises
  ``NVMLError`` ("GPU is lost"), as a GPU that falls off the bus mid-run;
- ``mig``: the number of MIG devices (MIG mode on);
- ``xids``: ``[[seconds_after_init, xid], ...]`` critical XID events to deliver;
- ``processes``: ``[{"pid": ..., "memory": bytes}, ...]`` extra compute processes.

Every GPU also lists, as its compute processes, the descendants of the process that
loaded this module whose environment has ``CUDA_VISIBLE_DEVICES`` naming its index (what
the launcher gives a job), each using 256 MiB times (1 + pid % 4).

Readings move smoothly with time and differ per GPU; the energy counter is the integral
of the power reading, so it always increases. ``fake_break(i)`` / ``fake_fix(i)`` and
``fake_inject_xid(i, code)`` let in-process tests change a GPU while it runs.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from types import SimpleNamespace

FAKE = True

NVML_SUCCESS = 0
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
NVML_PCIE_UTIL_TX_BYTES = 0
NVML_PCIE_UTIL_RX_BYTES = 1
NVML_FI_DEV_MEMORY_TEMP = 82
NVML_VALUE_TYPE_UNSIGNED_INT = 1
NVML_DEVICE_MIG_ENABLE = 1
nvmlMemory_v2 = 0x02000028
nvmlEventTypeXidCriticalError = 0x8
nvmlClocksEventReasonGpuIdle = 0x1
nvmlClocksEventReasonSwPowerCap = 0x4

_MESSAGES = {
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_TIMEOUT: "Timeout",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """Like the real one: ``value`` is the NVML return code."""

    value = NVML_ERROR_UNKNOWN

    def __init__(self, value: int | None = None) -> None:
        if value is not None:
            self.value = value
        super().__init__(self.value)

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"NVML error {self.value}")


class NVMLError_LibraryNotFound(NVMLError):
    value = NVML_ERROR_LIBRARY_NOT_FOUND


class NVMLError_NotSupported(NVMLError):
    value = NVML_ERROR_NOT_SUPPORTED


class NVMLError_NotFound(NVMLError):
    value = NVML_ERROR_NOT_FOUND


class NVMLError_Timeout(NVMLError):
    value = NVML_ERROR_TIMEOUT


class NVMLError_GpuIsLost(NVMLError):
    value = NVML_ERROR_GPU_IS_LOST


class _Handle:
    __slots__ = ("index", "mig")

    def __init__(self, index: int, mig: int | None = None) -> None:
        self.index = index
        self.mig = mig


_gpus: list[dict] = []
_started = 0.0
_broken: set[int] = set()
_xids: list[tuple[float, int, int]] = []  # (due, gpu index, code), sorted
_xid_lock = threading.Lock()
_procs_cache: tuple[float, dict[int, list[int]]] = (0.0, {})


def _load() -> list[dict]:
    raw = os.environ.get("FAKE_NVML_GPUS", "")
    if not raw:
        raise NVMLError_LibraryNotFound()
    spec = json.loads(raw)
    if isinstance(spec, int):
        spec = [{} for _ in range(spec)]
    host = os.environ.get("CP_HOSTNAME", "host")
    gpus = []
    for i, g in enumerate(spec):
        unsupported = g.get("unsupported", [])
        gpus.append(
            {
                "name": g.get("name", "NVIDIA H100 80GB HBM3 (fake)"),
                "memory_total": int(g.get("memory_total", 80 * 1024**3)),
                "uuid": g.get("uuid", f"GPU-fake-{host}-{i}"),
                "pci_bus_id": g.get("pci_bus_id"),
                "unsupported": "all" if unsupported is True else set(unsupported),
                "fail_after": g.get("fail_after"),
                "mig": int(g.get("mig", 0)),
                "processes": list(g.get("processes", [])),
                "xids": list(g.get("xids", [])),
            }
        )
    return gpus


def nvmlInit() -> None:
    global _gpus, _started
    _gpus = _load()
    _started = time.monotonic()
    _broken.clear()
    with _xid_lock:
        _xids.clear()
        for i, g in enumerate(_gpus):
            for after, code in g["xids"]:
                _xids.append((_started + float(after), i, int(code)))
        _xids.sort()


def nvmlShutdown() -> None:
    pass


def nvmlSystemGetDriverVersion() -> str:
    return "999.99-fake"


def nvmlDeviceGetCount() -> int:
    return len(_gpus)


def _gpu(handle: _Handle, field: str | None = None) -> dict:
    if not isinstance(handle, _Handle) or not 0 <= handle.index < len(_gpus):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    gpu = _gpus[handle.index]
    lost_at = gpu["fail_after"]
    if handle.index in _broken or (
        lost_at is not None and time.monotonic() - _started >= float(lost_at)
    ):
        raise NVMLError_GpuIsLost()
    if field is not None and (gpu["unsupported"] == "all" or field in gpu["unsupported"]):
        raise NVMLError_NotSupported()
    return gpu


def _t() -> float:
    return time.monotonic() - _started


def _wave(handle: _Handle, period: float, phase: float = 0.0) -> float:
    """0..1, smooth, different per GPU."""
    return 0.5 + 0.5 * math.sin(_t() / period + handle.index * 1.7 + phase)


def nvmlDeviceGetHandleByIndex(index: int) -> _Handle:
    if not 0 <= index < len(_gpus):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return _Handle(index)


def nvmlDeviceGetName(handle: _Handle) -> str:
    gpu = _gpu(handle)
    if handle.mig is not None:
        return f"{gpu['name']} MIG 1g.10gb"
    return gpu["name"]


def nvmlDeviceGetUUID(handle: _Handle) -> str:
    gpu = _gpu(handle)
    if handle.mig is not None:
        return f"MIG-{gpu['uuid'][4:]}-{handle.mig}"
    return gpu["uuid"]


def nvmlDeviceGetPciInfo(handle: _Handle) -> SimpleNamespace:
    gpu = _gpu(handle)
    if not gpu["pci_bus_id"]:
        raise NVMLError_NotSupported()
    return SimpleNamespace(busId=gpu["pci_bus_id"])


def _memory_used(handle: _Handle) -> int:
    gpu = _gpu(handle)
    used = int(gpu["memory_total"] * (0.1 + 0.6 * _wave(handle, 11.0)))
    return used + sum(_process_memory(pid) for pid in _pids_on(handle.index))


def nvmlDeviceGetMemoryInfo(handle: _Handle, version: int | None = None) -> SimpleNamespace:
    gpu = _gpu(handle)
    total = gpu["memory_total"] // (7 if handle.mig is not None else 1)
    used = min(total, _memory_used(handle) // (7 if handle.mig is not None else 1))
    if version is None:
        return SimpleNamespace(total=total, used=used, free=total - used)
    _gpu(handle, "memory_v2")
    reserved = 512 * 1024**2 if total > 1024**3 else 0
    free = max(0, total - used - reserved)
    return SimpleNamespace(version=version, total=total, reserved=reserved, used=used, free=free)


def nvmlDeviceGetUtilizationRates(handle: _Handle) -> SimpleNamespace:
    _gpu(handle, "utilization")
    if handle.mig is not None:
        raise NVMLError_NotSupported()  # like the real library on MIG devices
    return SimpleNamespace(
        gpu=round(100 * _wave(handle, 5.0)), memory=round(80 * _wave(handle, 5.0, 0.4))
    )


def nvmlDeviceGetEncoderUtilization(handle: _Handle) -> list[int]:
    _gpu(handle, "enc_dec")
    return [0, 167000]


def nvmlDeviceGetDecoderUtilization(handle: _Handle) -> list[int]:
    _gpu(handle, "enc_dec")
    return [round(10 * _wave(handle, 13.0)), 167000]


def nvmlDeviceGetTemperature(handle: _Handle, sensor: int) -> int:
    _gpu(handle)
    return round(35 + 40 * _wave(handle, 17.0))


def nvmlDeviceGetFieldValues(handle: _Handle, field_ids: list[int]) -> list[SimpleNamespace]:
    gpu = _gpu(handle)
    values = []
    for field in field_ids:
        supported = field == NVML_FI_DEV_MEMORY_TEMP and not (
            gpu["unsupported"] == "all" or "memory_temp" in gpu["unsupported"]
        )
        values.append(
            SimpleNamespace(
                fieldId=field,
                nvmlReturn=NVML_SUCCESS if supported else NVML_ERROR_NOT_SUPPORTED,
                valueType=NVML_VALUE_TYPE_UNSIGNED_INT,
                value=SimpleNamespace(
                    uiVal=round(40 + 40 * _wave(handle, 19.0)) if supported else 0
                ),
            )
        )
    return values


def _power_mw(handle: _Handle, t: float) -> float:
    # 200 W + 100 W * sin(t / 7 + phase): its integral is known in closed form below.
    return 1000 * (200 + 100 * math.sin(t / 7.0 + handle.index * 1.7))


def nvmlDeviceGetPowerUsage(handle: _Handle) -> int:
    _gpu(handle, "power")
    return round(_power_mw(handle, _t()))


def nvmlDeviceGetEnforcedPowerLimit(handle: _Handle) -> int:
    _gpu(handle, "power")
    return 700_000


def nvmlDeviceGetTotalEnergyConsumption(handle: _Handle) -> int:
    _gpu(handle, "energy")
    t, phase = _t(), handle.index * 1.7
    joules = 200 * t - 700 * (math.cos(t / 7.0 + phase) - math.cos(phase))
    return round(1_000_000_000 + joules * 1000)  # mJ since "boot"


def nvmlDeviceGetClockInfo(handle: _Handle, clock: int) -> int:
    _gpu(handle, "clocks")
    if clock == NVML_CLOCK_MEM:
        return 2619
    return round(1200 + 780 * _wave(handle, 5.0))


def nvmlDeviceGetPerformanceState(handle: _Handle) -> int:
    _gpu(handle, "pstate")
    return 0 if _wave(handle, 5.0) > 0.1 else 8


def nvmlDeviceGetFanSpeed(handle: _Handle) -> int:
    _gpu(handle, "fan")
    return round(30 + 50 * _wave(handle, 23.0))


def nvmlDeviceGetCurrentClocksEventReasons(handle: _Handle) -> int:
    _gpu(handle, "throttle")
    return nvmlClocksEventReasonGpuIdle if _wave(handle, 5.0) < 0.1 else 0


def nvmlDeviceGetCurrentClocksThrottleReasons(handle: _Handle) -> int:
    return nvmlDeviceGetCurrentClocksEventReasons(handle)


def nvmlDeviceGetTotalEccErrors(handle: _Handle, error_type: int, counter_type: int) -> int:
    _gpu(handle, "ecc")
    return 3 if error_type == NVML_MEMORY_ERROR_TYPE_CORRECTED else 0


def nvmlDeviceGetRemappedRows(handle: _Handle) -> tuple[int, int, int, int]:
    _gpu(handle, "remapped")
    return (1, 0, 0, 0)


def nvmlDeviceGetPcieThroughput(handle: _Handle, counter: int) -> int:
    _gpu(handle, "pcie")
    return round(2_000_000 * _wave(handle, 3.0, counter))  # KB/s


def nvmlDeviceGetPcieReplayCounter(handle: _Handle) -> int:
    _gpu(handle, "pcie")
    return 0


def _process_memory(pid: int) -> int:
    return 256 * 1024**2 * (1 + pid % 4)


def _pids_on(index: int) -> list[int]:
    """Descendants of this process whose CUDA_VISIBLE_DEVICES names ``index``."""
    global _procs_cache
    now = time.monotonic()
    if now - _procs_cache[0] > 0.5:
        found: dict[int, list[int]] = {}
        try:
            import psutil

            for proc in psutil.Process().children(recursive=True):
                try:
                    visible = proc.environ().get("CUDA_VISIBLE_DEVICES", "")
                except (psutil.Error, OSError):
                    continue
                for part in visible.split(","):
                    if part.strip().isdigit():
                        found.setdefault(int(part), []).append(proc.pid)
        except Exception:  # psutil missing or the process table moved under us
            found = {}
        _procs_cache = (now, found)
    return _procs_cache[1].get(index, [])


def nvmlDeviceGetComputeRunningProcesses(handle: _Handle) -> list[SimpleNamespace]:
    gpu = _gpu(handle, "processes")
    if handle.mig is not None:
        return []
    procs = [
        SimpleNamespace(pid=pid, usedGpuMemory=_process_memory(pid))
        for pid in _pids_on(handle.index)
    ]
    procs += [
        SimpleNamespace(pid=int(p["pid"]), usedGpuMemory=p.get("memory")) for p in gpu["processes"]
    ]
    return procs


def nvmlDeviceGetProcessUtilization(handle: _Handle, timestamp: int) -> list[SimpleNamespace]:
    gpu = _gpu(handle, "process_utilization")
    pids = _pids_on(handle.index) + [int(p["pid"]) for p in gpu["processes"]]
    share = round(100 * _wave(handle, 5.0)) // max(1, len(pids))
    now_us = int(time.time() * 1e6)
    return [
        SimpleNamespace(pid=pid, timeStamp=now_us, smUtil=share, memUtil=share // 2) for pid in pids
    ]


# --- MIG --------------------------------------------------------------------------------


def nvmlDeviceGetMigMode(handle: _Handle) -> list[int]:
    gpu = _gpu(handle)
    return [1, 1] if gpu["mig"] else [0, 0]


def nvmlDeviceGetMaxMigDeviceCount(handle: _Handle) -> int:
    gpu = _gpu(handle)
    return 7 if gpu["mig"] else 0


def nvmlDeviceGetMigDeviceHandleByIndex(handle: _Handle, index: int) -> _Handle:
    gpu = _gpu(handle)
    if not 0 <= index < gpu["mig"]:
        raise NVMLError_NotFound()
    return _Handle(handle.index, mig=index)


def nvmlDeviceGetGpuInstanceId(handle: _Handle) -> int:
    _gpu(handle)
    if handle.mig is None:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return 1 + handle.mig


def nvmlDeviceGetComputeInstanceId(handle: _Handle) -> int:
    _gpu(handle)
    if handle.mig is None:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return 0


# --- XID events -------------------------------------------------------------------------


class _EventSet:
    def __init__(self) -> None:
        self.indices: set[int] = set()


def nvmlEventSetCreate() -> _EventSet:
    return _EventSet()


def nvmlDeviceRegisterEvents(handle: _Handle, event_types: int, event_set: _EventSet) -> None:
    _gpu(handle, "events")
    event_set.indices.add(handle.index)


def nvmlEventSetWait_v2(event_set: _EventSet, timeout_ms: int) -> SimpleNamespace:
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        now = time.monotonic()
        with _xid_lock:
            for k, (due, index, code) in enumerate(_xids):
                if due <= now and index in event_set.indices:
                    del _xids[k]
                    return SimpleNamespace(
                        device=_Handle(index),
                        eventType=nvmlEventTypeXidCriticalError,
                        eventData=code,
                        gpuInstanceId=0xFFFFFFFF,
                        computeInstanceId=0xFFFFFFFF,
                    )
        if now >= deadline:
            raise NVMLError_Timeout()
        time.sleep(min(0.05, deadline - now))


def nvmlEventSetWait(event_set: _EventSet, timeout_ms: int) -> SimpleNamespace:
    return nvmlEventSetWait_v2(event_set, timeout_ms)


def nvmlEventSetFree(event_set: _EventSet) -> None:
    event_set.indices.clear()


# --- test controls (not in the real library) --------------------------------------------


def fake_break(index: int) -> None:
    """From now on every call on GPU ``index`` raises NVMLError (GPU is lost)."""
    _broken.add(index)


def fake_fix(index: int) -> None:
    _broken.discard(index)


def fake_inject_xid(index: int, code: int) -> None:
    with _xid_lock:
        _xids.append((time.monotonic(), index, code))
        _xids.sort()
