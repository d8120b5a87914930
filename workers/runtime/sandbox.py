"""The sandbox every workload runs in: bubblewrap (``bwrap``), and an unprivileged uid.

What a sandboxed node sees:

- the root file system read-only, with private ``/tmp``, ``/dev/shm`` and ``/run``, a
  minimal ``/dev`` (plus the device nodes of the GPUs reserved for it, nothing else) and a
  ``/proc`` of its own PID namespace (no other process, so no ``/proc/<worker>/environ``);
- nothing of the control plane: its checkout, ``CP_VAR_DIR`` (database, secret key, Redis
  password), ``CP_STORAGE_DIR`` (other jobs and projects), the worker's home directory and
  ``CP_SANDBOX_HIDE`` are empty there; only the Python environment it runs in, the
  packages of the checkout a job may import (``workers`` for the SDK and the recipes, and
  the packages of ``CP_JOB_BUILTIN_MODULES``) come back read-only;
- read-write: its own working directory and its job's checkpoint directory, only;
- a network namespace with only loopback for single-node work (the rendezvous store and
  gloo listen where nothing else reaches them); the host network for multi-node jobs.

Where the worker runs as root, the node runs as uid/gid ``CP_SANDBOX_UID_BASE + project``
(privileges dropped with ``setpriv`` inside the sandbox: no capabilities, no new
privileges), so a workload cannot read what the worker's user owns even where it is
visible, nor another project's files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from django.conf import settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: Device nodes every GPU job needs besides its own /dev/nvidiaN.
NVIDIA_SHARED_DEVICES = (
    "/dev/nvidiactl",
    "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools",
    "/dev/nvidia-modeset",
    "/dev/nvidia-caps",
)
#: The user name a sandboxed workload sees (getpass.getuser() reads it; the uid has no
#: /etc/passwd entry).
SANDBOX_USER = "cp-job"


class SandboxUnavailable(RuntimeError):
    """This host cannot sandbox workloads (and the operator did not opt out)."""


@dataclass
class Layout:
    """What one node's sandbox contains."""

    work_dir: Path
    writable: list[Path] = field(default_factory=list)  # besides the working directory
    readable: list[Path] = field(default_factory=list)  # besides the Python environment
    packages: list[str] = field(default_factory=list)  # more top-level packages of the checkout
    gpu_indices: list[int] = field(default_factory=list)
    private_network: bool = True
    hostname: str = "cp-job"
    uid: int | None = None  # None: keep the worker's uid (it is not root)


def enabled() -> bool:
    return settings.SANDBOX == "bwrap"


@lru_cache(maxsize=1)
def probe() -> str:
    """'' when bubblewrap works on this host, else why not (said at worker start)."""
    path = shutil.which("bwrap")
    if path is None:
        return (
            "bubblewrap (bwrap) is not installed: install Debian's 'bubblewrap' package "
            "(apt-get install bubblewrap), or set CP_SANDBOX=off on a trusted single-user "
            "install"
        )
    try:
        result = subprocess.run(
            [path, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
             "--unshare-pid", "--unshare-net", "--", "/bin/true"],
            capture_output=True,
            timeout=20,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap does not run here: {exc}"
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip()[:200]
        return f"bubblewrap cannot create namespaces here: {detail}"
    return ""


@lru_cache(maxsize=1)
def version() -> str:
    path = shutil.which("bwrap")
    if path is None:
        return ""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def status() -> str:
    """What the worker reports in its inventory: 'bwrap', 'off' or 'unavailable: why'."""
    if not enabled():
        return "off"
    why = probe()
    return f"unavailable: {why}" if why else "bwrap"


def uid_for_project(project_id: int) -> int | None:
    """The uid a project's workloads run as; None where the worker is not root."""
    if os.geteuid() != 0:
        return None
    return settings.SANDBOX_UID_BASE + project_id % settings.SANDBOX_UID_COUNT


def give_to(uid: int | None, *paths: Path) -> None:
    """Hand directories (recursively) to the workload's uid."""
    if uid is None:
        return
    for top in paths:
        if not top.exists():
            continue
        os.chown(top, uid, uid, follow_symlinks=False)
        for root, dirs, files in os.walk(top):
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, uid, follow_symlinks=False)


def _python_roots() -> list[Path]:
    """The interpreter and the worker's environment (its venv and the base install)."""
    roots = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parents[1]}
    return sorted(roots)


def _importable_packages(extra: list[str] | None = None) -> list[Path]:
    """Top-level packages of the checkout that a job may import: the SDK and recipes
    (``workers``), those named by ``CP_JOB_BUILTIN_MODULES`` and ``extra``."""
    names = {"workers", *(extra or [])}
    names |= {m.split(".")[0] for m in settings.JOB_BUILTIN_MODULES if m}
    return sorted(PROJECT_ROOT / n for n in names if (PROJECT_ROOT / n).is_dir())


def hidden_paths() -> list[Path]:
    """Directories that are empty inside the sandbox."""
    candidates = [
        PROJECT_ROOT,
        Path(settings.VAR_DIR),
        Path(settings.STORAGE_DIR),
        Path(settings.ENV_CACHE_DIR),
        Path(settings.ENV_UV_CACHE_DIR),
        Path("/root"),
        Path("/home"),
        Path(os.path.expanduser("~")),
        *settings.SANDBOX_HIDE,
    ]
    found = {p.resolve() for p in candidates if p.is_dir()}
    return sorted(found, key=lambda p: len(p.parts))


def _gpu_devices(indices: list[int]) -> list[str]:
    devices = [f"/dev/nvidia{i}" for i in indices]
    if indices:
        devices += list(NVIDIA_SHARED_DEVICES)
    return [d for d in devices if os.path.exists(d)]


def wrap(argv: list[str], layout: Layout) -> list[str]:
    """``argv`` as it runs in the sandbox ``layout`` describes."""
    if not enabled():
        return argv
    why = probe()
    if why:
        raise SandboxUnavailable(why)
    bwrap = shutil.which("bwrap")
    assert bwrap is not None
    cmd = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for private in ("/tmp", "/dev/shm", "/run"):  # noqa: S108
        cmd += ["--perms", "1777" if private != "/run" else "0755", "--tmpfs", private]
    hidden = hidden_paths()
    for path in hidden:
        cmd += ["--tmpfs", str(path)]
    private = [*hidden, Path("/tmp"), Path("/run")]  # noqa: S108
    made: set[Path] = set()

    def parents(dest: Path) -> list[str]:
        """bwrap makes missing parents of a mount point 0700 (root's): make them 0755, so
        the workload's uid can walk down to what is bound there."""
        out: list[str] = []
        for parent in reversed(dest.parents):
            if parent in made or not any(parent.is_relative_to(h) and parent != h for h in private):
                continue
            made.add(parent)
            out += ["--perms", "0755", "--dir", str(parent)]
        return out

    packages = _importable_packages(layout.packages)
    for path in sorted({*_python_roots(), *packages, *layout.readable}):
        if path.exists():
            cmd += [*parents(path), "--ro-bind", str(path), str(path)]
    for path in sorted({layout.work_dir, *layout.writable}):
        cmd += [*parents(path), "--bind", str(path), str(path)]
    for device in _gpu_devices(layout.gpu_indices):
        cmd += ["--dev-bind", device, device]
    cmd += [
        "--chdir", str(layout.work_dir),
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--hostname", layout.hostname,
        "--die-with-parent", "--new-session",
    ]  # fmt: skip
    if layout.private_network:
        cmd.append("--unshare-net")
    if layout.uid is not None:
        # bwrap runs as root (it needs to, to mount); the workload must not: setpriv drops
        # to the project's uid with no groups, no capabilities and no way back.
        cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
        cmd += ["--", "setpriv", f"--reuid={layout.uid}", f"--regid={layout.uid}"]
        cmd += ["--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    return [*cmd, "--", *argv]
