"""FAKE pynvml for tests on machines without an NVIDIA GPU. Not the real library.

Tests put this directory first on PYTHONPATH. The GPUs it pretends to have come from the
environment: ``FAKE_NVML_GPUS`` is a JSON list of {"name": ..., "memory_total": ...}
objects (or a plain count). Unset, ``nvmlInit`` fails the way the real library does on a
machine with no driver.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

FAKE = True


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    def __str__(self) -> str:
        return "NVML Shared Library Not Found"


class NVMLError_NotSupported(NVMLError):
    def __str__(self) -> str:
        return "Not Supported"


_gpus: list[dict] = []


def _load() -> list[dict]:
    raw = os.environ.get("FAKE_NVML_GPUS", "")
    if not raw:
        raise NVMLError_LibraryNotFound()
    spec = json.loads(raw)
    if isinstance(spec, int):
        spec = [{} for _ in range(spec)]
    return [
        {
            "name": g.get("name", "NVIDIA H100 80GB HBM3 (fake)"),
            "memory_total": int(g.get("memory_total", 80 * 1024**3)),
            "uuid": g.get("uuid", f"GPU-fake-{os.environ.get('CP_HOSTNAME', 'host')}-{i}"),
        }
        for i, g in enumerate(spec)
    ]


def nvmlInit() -> None:
    global _gpus
    _gpus = _load()


def nvmlShutdown() -> None:
    pass


def nvmlSystemGetDriverVersion() -> str:
    return "999.99-fake"


def nvmlDeviceGetCount() -> int:
    return len(_gpus)


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    if not 0 <= index < len(_gpus):
        raise NVMLError("Invalid Argument")
    return index


def nvmlDeviceGetName(handle: int) -> str:
    return _gpus[handle]["name"]


def nvmlDeviceGetUUID(handle: int) -> str:
    return _gpus[handle]["uuid"]


def nvmlDeviceGetMemoryInfo(handle: int) -> SimpleNamespace:
    total = _gpus[handle]["memory_total"]
    return SimpleNamespace(total=total, used=0, free=total)


def nvmlDeviceGetPciInfo(handle: int) -> SimpleNamespace:
    raise NVMLError_NotSupported()
