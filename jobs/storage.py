"""Where a job's files live: ``CP_STORAGE_DIR`` (shared by every host in a cluster, e.g.
NFS, like Determined's shared_fs checkpoint storage).

    code/<uuid>/                   uploaded working directories, unpacked at submit
    jobs/<id>/checkpoints/<step>/  checkpoints (the SDK writes them, atomically)
    jobs/<id>/attempts/<n>/node<r> each node's working directory (a copy of the code)
    jobs/<id>/outputs/             its outputs (CP_OUTPUT_DIR, and the declared working-
                                   directory dirs copied in when a node ends)
"""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings


def root() -> Path:
    return Path(settings.STORAGE_DIR)


def code_root() -> Path:
    return root() / "code"


def job_root(job_id: int) -> Path:
    return root() / "jobs" / str(job_id)


def checkpoint_root(job_id: int) -> Path:
    return job_root(job_id) / "checkpoints"


def output_root(job_id: int) -> Path:
    return job_root(job_id) / "outputs"


def work_dir(job_id: int, attempt: int, rank: int) -> Path:
    return job_root(job_id) / "attempts" / str(attempt) / f"node{rank}"


def shown(path: str | Path) -> str:
    """A server path as clients see it: relative to the storage root (never the server's
    own layout); "" for none."""
    if not path:
        return ""
    try:
        return str(Path(path).resolve().relative_to(root().resolve()))
    except ValueError:
        return Path(path).name  # outside the storage root: its name only


def is_inside(path: Path, parent: Path) -> bool:
    path, parent = path.resolve(), parent.resolve()
    return path == parent or parent in path.parents


def share_read_only(*paths: Path) -> None:
    """Let a job's sandbox (its project's uid) read these files or directories; they stay
    inside the 0700 storage directory, which only the job's own mounts expose."""
    if os.geteuid() != 0:
        return
    for path in paths:
        if path.is_file():
            os.chmod(path, 0o644)
            continue
        for root, _dirs, files in os.walk(path):
            os.chmod(root, 0o755)  # noqa: S103 (read-only inside the job's sandbox)
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)
