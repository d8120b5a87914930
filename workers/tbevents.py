"""Metrics from TensorBoard event files, for scripts that log with the tools they already
use (the Hugging Face Trainer with ``--report_to tensorboard``, Lightning's
``TensorBoardLogger``, a plain ``torch.utils.tensorboard.SummaryWriter``): rank 0's
launcher watches the node's working directory and the job's output directory for
``events.out.tfevents.*`` and turns new scalars into the job's metrics as they are
written. Reading is TensorBoard's own (``EventFileLoader``, which also migrates TF1/TF2
summaries to one scalar form); nothing here parses protobuf.

Bounded and safe with files the workload controls: only regular files (never a link)
inside the watched directories, at most ``MAX_FILES`` of them and ``MAX_EVENTS`` events a
poll; a file older than the node is an earlier attempt's (its metrics are recorded).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from jobs.storage import is_inside

log = logging.getLogger(__name__)

PREFIX = "events.out.tfevents."
MAX_FILES = 64
MAX_EVENTS = 20_000  # a poll; the rest is read at the next one
MAX_WALK = 20_000  # entries looked at when looking for new files
SKIP_DIRS = {".git", "__pycache__", ".venv", "venv", "node_modules", ".cache"}
RESCAN_SECONDS = 10.0


class EventWatcher:
    def __init__(self, roots: list[Path], since: float | None = None) -> None:
        self.roots = [str(r) for r in roots]
        self.since = time.time() if since is None else since
        self.loaders: dict[str, Any] = {}
        self.skipped: set[str] = set()
        self.scanned_at = 0.0

    def _scan(self) -> None:
        seen = 0
        for root in self.roots:
            if not os.path.isdir(root):
                continue
            for here, dirs, files in os.walk(root, followlinks=False):
                dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
                seen += len(files) + len(dirs)
                for name in files:
                    if name.startswith(PREFIX):
                        self._consider(os.path.join(here, name), root)
                if seen > MAX_WALK:
                    return

    def _consider(self, path: str, root: str) -> None:
        if path in self.loaders or path in self.skipped or len(self.loaders) >= MAX_FILES:
            return
        try:
            info = os.lstat(path)
        except OSError:
            return
        if (
            not stat.S_ISREG(info.st_mode)
            or not is_inside(Path(path), Path(root))
            or info.st_mtime < self.since
        ):
            self.skipped.add(path)  # a link, or an earlier attempt's file
            return
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        self.loaders[path] = EventFileLoader(path)

    def poll(self, now: float | None = None) -> dict[int, dict[str, float]]:
        """New scalars since the last poll: step -> {tag: value}."""
        now = time.monotonic() if now is None else now
        if now - self.scanned_at >= RESCAN_SECONDS or not self.loaders:
            self.scanned_at = now
            self._scan()
        found: dict[int, dict[str, float]] = defaultdict(dict)
        budget = MAX_EVENTS
        for path, loader in list(self.loaders.items()):
            try:
                for event in loader.Load():
                    for value in event.summary.value:
                        scalar = _scalar(value)
                        if scalar is not None:
                            found[int(event.step)][value.tag] = scalar
                    budget -= 1
                    if budget <= 0:
                        return dict(found)
            except Exception as exc:  # a torn or foreign file: stop reading it
                log.info("stopped reading %s: %s", path, exc)
                del self.loaders[path]
                self.skipped.add(path)
        return dict(found)


def _scalar(value: Any) -> float | None:
    if value.metadata.plugin_data.plugin_name != "scalars" or not value.HasField("tensor"):
        return None
    from tensorboard.util import tensor_util

    array = tensor_util.make_ndarray(value.tensor)
    if array.ndim != 0 or array.dtype.kind not in "fiu":
        return None
    return float(array)
