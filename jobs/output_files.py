"""Reading a job's outputs (``jobs/<id>/outputs/``, see ``workers/artifacts.py``) for the
API, ``cpctl`` and the job page: list them, open one, stream them all as a tar.gz.

The directory is the job's to write while it runs: only regular files are listed and
served, opened without following links, and a path that leaves the directory (``..``, a
link on the way) is not found.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from jobs import storage

MAX_LISTED = 10_000


class BadPath(ValueError):
    """A path that cannot name an output (absolute, ``..``, empty parts)."""


@dataclass
class OutputFile:
    path: str
    size: int
    modified: datetime


def check_path(path: str, allow_empty: bool = False) -> str:
    if not path and allow_empty:
        return ""
    absolute, path = path.startswith("/"), path.rstrip("/")
    parts = path.split("/")
    bad_part = any(p in {"", ".", ".."} for p in parts)
    if absolute or bad_part or "\x00" in path or len(path) > 1000:
        raise BadPath(f"{path!r} is not a path inside the job's outputs (as the list shows them).")
    return path


def _walk(root: Path, prefix: str = "") -> Iterator[tuple[str, os.stat_result]]:
    base = root / prefix if prefix else root
    if base.is_symlink() or not storage.is_inside(base, root):
        return
    for here, dirs, files in os.walk(base, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(here, name)
            try:
                info = os.lstat(full)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode) and not name.endswith(".partial"):
                yield os.path.relpath(full, root), info


def listing(job_id: int, prefix: str = "") -> tuple[list[OutputFile], int, bool]:
    """(files, their total bytes, whether the list was cut at ``MAX_LISTED``)."""
    root = storage.output_root(job_id)
    files, total, count = [], 0, 0
    for rel, info in _walk(root, prefix):
        total += info.st_size
        count += 1
        if count <= MAX_LISTED:
            modified = datetime.fromtimestamp(info.st_mtime, tz=UTC)
            files.append(OutputFile(rel, info.st_size, modified))
    return sorted(files, key=lambda f: f.path), total, count > MAX_LISTED


def open_output(job_id: int, path: str) -> tuple[IO[bytes], int] | None:
    """The file at ``path`` of the job's outputs, opened, and its size; None if none."""
    root = storage.output_root(job_id)
    target = root / check_path(path)
    if not storage.is_inside(target.parent, root):
        return None
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb"), info.st_size


def model_dirs(job_id: int) -> list[str]:
    """The directories of the outputs (top level, or the root as '') that hold a Hugging
    Face model (a config.json): what the job page offers to register."""
    root = storage.output_root(job_id)
    if not root.is_dir():
        return []
    found = [""] if (root / "config.json").is_file() else []
    for child in sorted(root.iterdir())[:100]:
        if not child.is_symlink() and child.is_dir() and (child / "config.json").is_file():
            found.append(child.name)
    return found


class _Chunks:
    """A write-only file whose writes are taken out as they come (tarfile's stream mode)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def archive(job_id: int, prefix: str = "") -> Iterator[bytes]:
    """The job's outputs (under ``prefix``) as a gzipped tar, streamed in pieces."""
    root = storage.output_root(job_id)
    out = _Chunks()
    with tarfile.open(fileobj=out, mode="w|gz") as tar:  # type: ignore[call-overload]
        for rel, _info in _walk(root, prefix):
            opened = open_output(job_id, rel)
            if opened is None:
                continue
            handle, _size = opened
            with handle:
                member = tar.gettarinfo(arcname=rel, fileobj=handle)
                member.uid = member.gid = 0
                member.uname = member.gname = ""
                tar.addfile(member, handle)
            if data := out.take():
                yield data
    if data := out.take():
        yield data
