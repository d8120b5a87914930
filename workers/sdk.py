"""The job SDK: how training code talks to the control plane.

It has no Django import and works with or without the control plane. Under the control
plane the launcher sets a few environment variables; outside it every call is a cheap
no-op beyond normal logging, so the same script runs under plain ``torchrun`` too.

Environment (set by the launcher):

- ``CP_ATTEMPT_ID``: present when the process runs as an attempt of a job.
- ``CP_CHECKPOINT_DIR``: where checkpoints go (overrides a script's own output dir).
- ``CP_RESUME_FROM``: a complete checkpoint directory to resume from.
- ``CP_EVENTS_FILE``: a JSON-lines file; rank 0 appends one event per line:
  ``{"v": 1, "type": "metrics"|"checkpoint", "time": <unix float>, "step": ..., ...}``.

Preemption: :func:`install_signal_handlers` makes SIGTERM set a flag that
:func:`stop_requested` reads; the script then writes a checkpoint and exits 0.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

__all__ = [
    "EVENTS_VERSION",
    "checkpoint_dir",
    "install_signal_handlers",
    "is_managed",
    "is_rank_zero",
    "report_checkpoint",
    "report_metrics",
    "request_stop",
    "resume_from",
    "stop_requested",
]

EVENTS_VERSION = 1

log = logging.getLogger("workers.sdk")

_stop = threading.Event()
_write_lock = threading.Lock()


def is_managed() -> bool:
    """True when this process runs as an attempt under the control plane."""
    return bool(os.environ.get("CP_ATTEMPT_ID"))


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value) if value else None


def checkpoint_dir() -> Path | None:
    """The directory the control plane wants checkpoints in, or None."""
    return _env_path("CP_CHECKPOINT_DIR")


def resume_from() -> Path | None:
    """The checkpoint directory to resume from (set by the control plane), or None."""
    return _env_path("CP_RESUME_FROM")


def is_rank_zero() -> bool:
    """True on the global rank 0 (or when not distributed at all)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank() == 0
    except ImportError:  # the SDK does not need torch
        pass
    return os.environ.get("RANK", "0") == "0"


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe copy: numbers as floats (NaN/inf become null), everything else as str."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, bool):
            out[str(key)] = value
        elif isinstance(value, int | float):
            number = float(value)
            out[str(key)] = number if math.isfinite(number) else None
        elif hasattr(value, "item"):  # a 0-d tensor or numpy scalar
            number = float(value.item())
            out[str(key)] = number if math.isfinite(number) else None
        else:
            out[str(key)] = str(value)
    return out


def _emit(event: dict[str, Any]) -> None:
    path = _env_path("CP_EVENTS_FILE")
    if path is None or not is_rank_zero():
        return
    event = {"v": EVENTS_VERSION, "time": time.time(), **event}
    line = json.dumps(event, separators=(",", ":"), allow_nan=False) + "\n"
    with _write_lock:
        # One write per event on an O_APPEND descriptor: lines never interleave.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def report_metrics(
    step: int, values: dict[str, float], kind: str = "train", *, total: int | None = None
) -> None:
    """Report scalar metrics for ``step`` (``kind``: train, eval, system, ...).

    ``total``, when given, is the planned number of steps (shown as progress)."""
    event: dict[str, Any] = {"type": "metrics", "kind": str(kind), "step": int(step)}
    event["values"] = _clean(values)
    if total:
        event["total"] = int(total)
    _emit(event)


def report_checkpoint(path: str | Path, step: int, metrics: dict[str, float] | None = None) -> None:
    """Report a complete checkpoint (call after it has been renamed into place)."""
    _emit(
        {
            "type": "checkpoint",
            "step": int(step),
            "path": str(Path(path).resolve()),
            "metrics": _clean(metrics or {}),
        }
    )


def stop_requested() -> bool:
    """True once SIGTERM (or :func:`request_stop`) asked this process to stop."""
    return _stop.is_set()


def request_stop() -> None:
    """Ask the training loop to checkpoint and exit, as SIGTERM does."""
    _stop.set()


def _on_signal(signum: int, _frame: object) -> None:
    if not _stop.is_set():
        log.warning("received %s: will checkpoint and stop", signal.Signals(signum).name)
    _stop.set()


def install_signal_handlers() -> None:
    """Make SIGTERM set the stop flag instead of killing the process.

    Must be called from the main thread. A second SIGTERM does not kill either; the
    launcher's grace period ends with SIGKILL.
    """
    signal.signal(signal.SIGTERM, _on_signal)


# --- the job-facing API (what a training script calls) ---------------------------------------


def report(step: int, total: int | None = None, **metrics: float) -> None:
    """Report metrics for ``step``: ``sdk.report(step, total=1000, loss=0.31, lr=3e-4)``.

    ``total`` is the planned number of steps (shown as progress: step / total).
    """
    event: dict[str, Any] = {"type": "metrics", "kind": "train", "step": int(step)}
    event["values"] = _clean(metrics)
    if total:
        event["total"] = int(total)
    _emit(event)


def should_stop() -> bool:
    """True once the control plane asked this process to stop (cancel, preemption,
    max_runtime, its worker shutting down): save a checkpoint and exit 0.

    The first call installs the SIGTERM hook (when called from the main thread)."""
    global _hooked
    if not _hooked and threading.current_thread() is threading.main_thread():
        install_signal_handlers()
        _hooked = True
    return stop_requested()


_hooked = False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    state: Any,
    step: int,
    metrics: dict[str, float] | None = None,
    directory: str | Path | None = None,
) -> Path | None:
    """Save a checkpoint atomically and report it; returns its path (None off rank 0).

    ``state`` is a flat dict of tensors (``model.state_dict()``), written as
    ``model.safetensors``, or the path of a directory you wrote yourself (copied in). It
    goes to ``<CP_CHECKPOINT_DIR or directory>/step-<step>`` through a temporary directory
    that is fsynced and renamed into place, so a crash never leaves half a checkpoint.
    """
    if not is_rank_zero():
        return None
    root = Path(directory) if directory is not None else checkpoint_dir()
    if root is None:
        raise RuntimeError("No checkpoint directory: set CP_CHECKPOINT_DIR or pass directory=.")
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{int(step)}"
    tmp = root / f".tmp-step-{int(step)}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(state, str | Path):
        shutil.copytree(state, tmp)
    else:
        from safetensors.torch import save_file

        tmp.mkdir()
        tensors = {name: t.detach().contiguous().cpu() for name, t in state.items()}
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"step": str(int(step))})
    (tmp / "checkpoint.json").write_text(json.dumps({"step": int(step)}))
    for path in tmp.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    report_checkpoint(final, step, metrics)
    return final


def latest_checkpoint() -> Path | None:
    """Where to resume from: ``CP_RESUME_FROM`` when the control plane set it, else the
    newest complete ``step-N`` (or ``step_N``) directory under ``CP_CHECKPOINT_DIR``;
    None to start fresh. Temporary directories being written are never picked."""
    given = resume_from()
    if given is not None:
        return given
    root = checkpoint_dir()
    if root is None or not root.is_dir():
        return None
    steps = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if path.is_dir() and match:
            steps.append((int(match.group(1)), path))
    return max(steps)[1] if steps else None


# ``step-12`` (save_checkpoint) or ``step_00000012`` (the built-in recipe).
_STEP_DIR = re.compile(r"^step[-_](\d+)$")


def report_model(path: str | Path, metrics: dict[str, float] | None = None) -> None:
    """Offer a finished Hugging Face model directory to the model registry: when the job
    succeeds, the control plane registers it as a new version of the job's model."""
    _emit({"type": "model", "path": str(Path(path).resolve()), "metrics": _clean(metrics or {})})


__all__ += ["latest_checkpoint", "report", "report_model", "save_checkpoint", "should_stop"]
