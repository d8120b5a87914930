"""Unpacking a job's uploaded working directory (tar, tar.gz or zip), safely.

Refused, with a message saying which member and why: absolute paths, ``..`` components,
links of any kind, devices and fifos, more than ``max_files`` members, or more than
``max_bytes`` once unpacked (zip bombs). Nothing is left behind on failure: the archive is
unpacked into a temporary directory beside the destination and renamed into place last.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO


class ArchiveError(ValueError):
    """The upload is not an archive we unpack; the message says why."""


def _check_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"{name!r}: absolute paths are not allowed.")
    if ".." in path.parts or "\\" in name:
        raise ArchiveError(f"{name!r}: '..' and backslashes are not allowed in paths.")
    return path


def _unpack_tar(fileobj: BinaryIO, into: Path, max_files: int, max_bytes: int) -> None:
    try:
        archive = tarfile.open(fileobj=fileobj, mode="r:*")
    except tarfile.TarError as exc:
        raise ArchiveError(f"Not a tar archive: {exc}.") from None
    with archive:
        members = []
        total = 0
        for member in archive:
            _check_name(member.name)
            if member.issym() or member.islnk():
                raise ArchiveError(f"{member.name!r}: links are not allowed.")
            if not (member.isfile() or member.isdir()):
                raise ArchiveError(f"{member.name!r}: only files and directories are allowed.")
            total += member.size
            members.append(member)
            if len(members) > max_files:
                raise ArchiveError(f"More than {max_files} files.")
            if total > max_bytes:
                raise ArchiveError(f"More than {max_bytes} bytes once unpacked.")
        archive.extractall(into, members=members, filter="data")


def _unpack_zip(fileobj: BinaryIO, into: Path, max_files: int, max_bytes: int) -> None:
    try:
        archive = zipfile.ZipFile(fileobj)
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"Not a zip archive: {exc}.") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > max_files:
            raise ArchiveError(f"More than {max_files} files.")
        total = 0
        for info in infos:
            _check_name(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ArchiveError(f"{info.filename!r}: links are not allowed.")
            total += info.file_size
            if total > max_bytes:
                raise ArchiveError(f"More than {max_bytes} bytes once unpacked.")
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


def unpack(fileobj: BinaryIO, dest: Path, *, max_files: int, max_bytes: int) -> Path:
    """Unpack a tar/tar.gz/zip stream into ``dest`` (which must not exist yet)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
    try:
        head = fileobj.read(4)
        fileobj.seek(0)
        if head.startswith(b"PK"):
            _unpack_zip(fileobj, tmp, max_files, max_bytes)
        else:
            _unpack_tar(fileobj, tmp, max_files, max_bytes)
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
