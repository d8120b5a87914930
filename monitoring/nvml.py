"""The one gateway to NVML (nvidia-ml-py). Every call is failure-safe.

A missing library or driver is reported once, plainly ("no NVIDIA GPU: ..."), and yields no
GPUs; a field a GPU does not support reads as None, never an exception. No Django here: the
worker host and the telemetry agent both use it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypedDict, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class GpuInfo(TypedDict):
    index: int
    uuid: str
    name: str
    memory_total: int
    pci_bus_id: str


#: NVML return codes that mean "this GPU or driver does not have that field" (n/a for
#: good); anything else (GPU is lost, unknown error, ...) is a failure of the reading.
NOT_SUPPORTED = 3
NO_PERMISSION = 4
NOT_FOUND = 6
FUNCTION_NOT_FOUND = 13
TIMEOUT = 10
UNSUPPORTED_CODES = frozenset({NOT_SUPPORTED, FUNCTION_NOT_FOUND, NO_PERMISSION})


def error_code(exc: BaseException) -> int | None:
    """The NVML return code an exception carries (``NVMLError.value``), if any."""
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def is_unsupported(exc: BaseException) -> bool:
    """True when ``exc`` says the field does not exist here (rather than that it failed)."""
    if isinstance(exc, (AttributeError, TypeError, NotImplementedError)):
        return True  # an older library without the function or that signature
    return error_code(exc) in UNSUPPORTED_CODES


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_text = text


class Nvml:
    """A process-wide NVML session: ``start()`` once, then query; ``status`` says why not."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._module: Any = None
        self.available = False
        self.status = "not started"
        self.driver_version = ""

    def start(self) -> bool:
        """Initialise NVML; False (with ``status`` saying why) when there is no GPU to read."""
        with self._lock:
            if self.available:
                return True
            try:
                import pynvml
            except ImportError:
                self.status = "no NVIDIA GPU: nvidia-ml-py is not installed"
                log.info(self.status)
                return False
            try:
                pynvml.nvmlInit()
            except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
                self.status = f"no NVIDIA GPU: {exc}"
                log.info(self.status)
                return False
            self._module = pynvml
            self.available = True
            self.status = "ok"
            self.driver_version = _text(self.call(pynvml.nvmlSystemGetDriverVersion) or "")
            return True

    def shutdown(self) -> None:
        with self._lock:
            if self.available:
                self.call(self._module.nvmlShutdown)
            self.available = False
            self.status = "not started"

    def call(self, fn: Callable[..., T], *args: Any, default: T | None = None) -> T | None:
        """``fn(*args)``, or ``default`` when NVML says the field is unsupported or fails."""
        try:
            return fn(*args)
        except Exception as exc:  # NVMLError_NotSupported and friends
            log.debug("NVML %s failed: %s", getattr(fn, "__name__", fn), exc)
            return default

    def function(self, name: str) -> Callable[..., Any] | None:
        """The library's function ``name``, or None (an older nvidia-ml-py lacks it)."""
        return getattr(self._module, name, None) if self._module is not None else None

    def constant(self, name: str, default: Any = None) -> Any:
        return getattr(self._module, name, default) if self._module is not None else default

    @property
    def module(self) -> Any:
        return self._module

    def gpus(self) -> list[GpuInfo]:
        """The GPUs of this host, in NVML index order; [] without NVML."""
        if not self.available:
            return []
        nv = self._module
        found: list[GpuInfo] = []
        for index in range(self.call(nv.nvmlDeviceGetCount, default=0) or 0):
            handle = self.call(nv.nvmlDeviceGetHandleByIndex, index)
            if handle is None:
                continue
            memory = self.call(nv.nvmlDeviceGetMemoryInfo, handle)
            pci = self.call(nv.nvmlDeviceGetPciInfo, handle)
            found.append(
                GpuInfo(
                    index=index,
                    uuid=_text(self.call(nv.nvmlDeviceGetUUID, handle) or f"unknown-{index}"),
                    name=_text(self.call(nv.nvmlDeviceGetName, handle) or "NVIDIA GPU"),
                    memory_total=int(getattr(memory, "total", 0) or 0),
                    pci_bus_id=_text(getattr(pci, "busId", "") or ""),
                )
            )
        return found


nvml = Nvml()
