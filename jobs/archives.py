"""Unpacking a job's uploaded working directory (tar, tar.gz or zip), safely.

Refused, with a message saying which member and why, all from the archive's headers before
a byte is written: absolute paths, ``..`` components, links of any kind, devices and fifos,
names the caller's ``allow`` refuses, more than ``max_files`` members, more than
``max_bytes`` once unpacked, more than ``max_ratio`` times the archive's own size (zip
bombs), or more than the disk can take while keeping ``keep_free`` bytes free. Nothing is
left behind on failure: the archive is unpacked into a temporary directory beside the
destination and renamed into place last.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO


class ArchiveError(ValueError):
    """The upload is not an archive we unpack; the message says why."""


class ArchiveTooLarge(ArchiveError):
    """It would unpack to more than its limits allow."""


class NoRoom(ArchiveError):
    """The disk has no room for what it unpacks to."""


@dataclass
class Limits:
    max_files: int
    max_bytes: int
    max_ratio: float | None = None  # unpacked bytes per archive byte
    archive_size: int = 0
    keep_free: int = 0  # bytes the disk keeps free
    allow: Callable[[PurePosixPath], str] | None = None  # "" or why a name is refused

    def check_total(self, total: int, where: Path) -> None:
        if total > self.max_bytes:
            raise ArchiveTooLarge(f"More than {self.max_bytes} bytes once unpacked.")
        if self.max_ratio is not None and self.archive_size:
            bound = max(64 * 1024 * 1024, int(self.archive_size * self.max_ratio))
            if total > bound:
                raise ArchiveTooLarge(
                    f"It would unpack to {total} bytes, over {self.max_ratio:g} times its own "
                    f"size ({self.archive_size} bytes): refused as a decompression bomb."
                )
        free = shutil.disk_usage(where).free
        if total > free - self.keep_free:
            raise NoRoom(
                f"It unpacks to {total} bytes and the server has {free} bytes free "
                f"(keeping {self.keep_free} free): try again later or ask an operator."
            )

    def check_name(self, path: PurePosixPath, is_dir: bool) -> None:
        if self.allow is not None and not is_dir:
            why = self.allow(path)
            if why:
                raise ArchiveError(f"{str(path)!r}: {why}")


def _check_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"{name!r}: absolute paths are not allowed.")
    if ".." in path.parts or "\\" in name:
        raise ArchiveError(f"{name!r}: '..' and backslashes are not allowed in paths.")
    return path


def _unpack_tar(fileobj: BinaryIO, into: Path, limits: Limits) -> None:
    try:
        archive = tarfile.open(fileobj=fileobj, mode="r:*")
    except tarfile.TarError as exc:
        raise ArchiveError(f"Not a tar archive: {exc}.") from None
    with archive:
        members = []
        total = 0
        for member in archive:
            path = _check_name(member.name)
            if member.issym() or member.islnk():
                raise ArchiveError(f"{member.name!r}: links are not allowed.")
            if not (member.isfile() or member.isdir()):
                raise ArchiveError(f"{member.name!r}: only files and directories are allowed.")
            limits.check_name(path, member.isdir())
            total += member.size
            members.append(member)
            if len(members) > limits.max_files:
                raise ArchiveError(f"More than {limits.max_files} files.")
            if total > limits.max_bytes:
                raise ArchiveTooLarge(f"More than {limits.max_bytes} bytes once unpacked.")
        limits.check_total(total, into)
        archive.extractall(into, members=members, filter="data")


def _unpack_zip(fileobj: BinaryIO, into: Path, limits: Limits) -> None:
    try:
        archive = zipfile.ZipFile(fileobj)
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"Not a zip archive: {exc}.") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_files:
            raise ArchiveError(f"More than {limits.max_files} files.")
        total = 0
        for info in infos:
            path = _check_name(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ArchiveError(f"{info.filename!r}: links are not allowed.")
            limits.check_name(path, info.is_dir())
            total += info.file_size
            if total > limits.max_bytes:
                raise ArchiveTooLarge(f"More than {limits.max_bytes} bytes once unpacked.")
        limits.check_total(total, into)
        for info in infos:
            target = into / info.filename
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            with archive.open(info) as source, open(target, "wb") as out:
                while chunk := source.read(1 << 20):
                    written += len(chunk)
                    if written > info.file_size:  # the header lied
                        raise ArchiveError(f"{info.filename!r} is larger than it says.")
                    out.write(chunk)


def unpack(
    fileobj: BinaryIO,
    dest: Path,
    *,
    max_files: int,
    max_bytes: int,
    max_ratio: float | None = None,
    archive_size: int = 0,
    keep_free: int = 0,
    allow: Callable[[PurePosixPath], str] | None = None,
) -> Path:
    """Unpack a tar/tar.gz/zip stream into ``dest`` (which must not exist yet)."""
    limits = Limits(max_files, max_bytes, max_ratio, archive_size, keep_free, allow)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
    try:
        head = fileobj.read(4)
        fileobj.seek(0)
        if head.startswith(b"PK"):
            _unpack_zip(fileobj, tmp, limits)
        else:
            _unpack_tar(fileobj, tmp, limits)
        entries = list(tmp.iterdir())
        # A single top-level directory (as `tar czf x.tgz mydir` makes) is the root.
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
        if not any(root.iterdir()):
            raise ArchiveError("The archive is empty.")
        for path in root.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else (path.stat().st_mode & 0o755) | 0o600)
        os.replace(root, dest)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ArchiveError(f"The archive could not be unpacked: {exc}.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_inside(root: Path, relative: str) -> Path | None:
    """``root/relative`` if it exists and stays inside ``root`` (links resolved), else None."""
    root = root.resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        return None
    return target if target.exists() else None
