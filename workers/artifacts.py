"""A job's outputs, kept when a node ends: the directories its spec declares (``outputs``,
default ``outputs/``) are copied from the node's working directory into the job's output
directory (``CP_OUTPUT_DIR``, which the job may also write to directly), where the API,
``cpctl`` and the job page list and serve them after the job ends.

The working directory is the workload's: only regular files are copied (never a symlink,
a FIFO or a device, which could make the worker read what the job may not), each opened
without following links, within a byte and a file budget (the project's storage quota
left, and ``CP_JOB_OUTPUTS_MAX_BYTES`` / ``CP_JOB_OUTPUTS_MAX_FILES``); what does not fit
is left out and the log says so.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from jobs.storage import is_inside


@dataclass
class Kept:
    files: int = 0
    bytes: int = 0
    left_out: list[str] = field(default_factory=list)  # why, one line each

    def summary(self, declared: list[str]) -> str:
        where = ", ".join(f"{d}/" for d in declared)
        text = f"[outputs] kept {self.files} file(s), {self.bytes} bytes, from {where}\n"
        return text + "".join(f"[outputs] {why}\n" for why in self.left_out[:20])


def _copy_regular(source: Path, target: Path, dest: Path) -> int | None:
    """Copy ``source`` to ``target`` (atomically) if it is a regular file; its size. The
    job may write ``dest`` too: a directory of it swapped for a link is not followed."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None  # a symlink (ELOOP), gone, or unreadable
    with os.fdopen(fd, "rb") as src:
        info = os.fstat(src.fileno())
        if not stat.S_ISREG(info.st_mode):
            return None
        here = dest
        for part in target.parent.relative_to(dest).parts:
            here = here / part
            if here.is_symlink():
                return None
            here.mkdir(exist_ok=True)
        if not is_inside(target.parent, dest) or target.is_symlink():
            return None
        partial = target.with_name(f".{target.name}.partial")
        partial.unlink(missing_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        with os.fdopen(os.open(partial, flags, 0o644), "wb") as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
        os.replace(partial, target)
        return info.st_size


def collect(work: Path, declared: list[str], dest: Path, max_bytes: int, max_files: int) -> Kept:
    """Copy the declared directories of ``work`` into ``dest`` (same relative paths)."""
    kept = Kept()
    for name in declared:
        source = work / name
        if source.is_symlink() or not source.is_dir():
            continue  # not made (or not a directory): nothing to keep
        for root, dirs, files in os.walk(source, followlinks=False):
            dirs.sort()
            for file in sorted(files):
                path = Path(root) / file
                rel = path.relative_to(work)
                try:
                    size = path.lstat().st_size
                except OSError:
                    continue
                if kept.files >= max_files:
                    kept.left_out.append(f"{rel}: past {max_files} files")
                    continue
                if kept.bytes + size > max_bytes:
                    kept.left_out.append(
                        f"{rel}: {size} bytes would pass the {max_bytes}-byte budget"
                    )
                    continue
                copied = _copy_regular(path, dest / rel, dest)
                if copied is None:
                    if not path.is_symlink():
                        continue
                    kept.left_out.append(f"{rel}: a symbolic link, not followed")
                    continue
                kept.files += 1
                kept.bytes += copied
    return kept


def tree_size(root: Path) -> int:
    """Bytes of the regular files under ``root`` (links not followed)."""
    total = 0
    for base, _dirs, files in os.walk(root, followlinks=False):
        for file in files:
            try:
                info = os.lstat(os.path.join(base, file))
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
    return total
