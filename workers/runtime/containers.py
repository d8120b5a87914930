"""Container images as workload environments (spec ``environment: {image: ...}``).

A host with podman or docker (``CP_CONTAINER_RUNTIME``: auto, podman, docker or none)
reports it in its inventory; the scheduler places image jobs only there. The node runs
``RUNTIME run`` with the job's working and checkpoint directories mounted at the same
paths, the reserved GPUs only (CDI names for podman, ``--gpus device=`` for docker), no
network but loopback for single-node jobs (the host network where multi-node needs it),
all capabilities dropped, no new privileges, and the project's uid where the worker is
root. The image decides the interpreter: the entrypoint runs as written.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from django.conf import settings

from workers.runtime.sandbox import PROJECT_ROOT


@lru_cache(maxsize=1)
def runtime() -> str:
    """The container runtime binary this host uses, or ''."""
    choice = settings.CONTAINER_RUNTIME
    if choice == "none":
        return ""
    for name in ("podman", "docker") if choice == "auto" else (choice,):
        path = shutil.which(name)
        if path is None:
            continue
        try:  # docker's client is often installed without an engine: ask the engine
            probe = subprocess.run(
                [path, "info", "--format", "{{.Host.OS}}{{.OSType}}"],
                capture_output=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0 and (name == "docker" or _podman_runs(path)):
            return path
    return ""


def _podman_runs(podman: str) -> bool:
    """Whether podman can start a container here (an engine that answers `info` may still
    fail to run one: cgroups, rlimits). Runs /bin/true in a throw-away root file system
    made of that binary and its libraries, so no image or registry is needed."""
    with tempfile.TemporaryDirectory(prefix="cp-podman-probe-") as root:
        true = shutil.which("true") or "/bin/true"
        try:
            ldd = subprocess.run(["ldd", true], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return False
        files = [true, *re.findall(r"(/\S+) \(0x", ldd.stdout)]
        for file in files:
            target = Path(root) / file.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)
        (Path(root) / "bin").mkdir(exist_ok=True)
        shutil.copy2(true, Path(root) / "bin" / "true")
        try:
            result = subprocess.run(
                [podman, "run", "--rm", "--network", "none", "--rootfs", root, "/bin/true"],
                capture_output=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return result.returncode == 0


@lru_cache(maxsize=1)
def describe() -> str:
    """'podman 4.3.1' or '' (the inventory's container_runtime)."""
    path = runtime()
    if not path:
        return ""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return Path(path).name
    words = out.stdout.split()
    version = words[2].rstrip(",") if len(words) > 2 else ""
    return f"{Path(path).name} {version}".strip()


def run_argv(
    image: str,
    argv: list[str],
    *,
    name: str,
    env: dict[str, str],
    work_dir: Path,
    mounts: list[Path],
    gpu_indices: list[int],
    host_network: bool,
    uid: int | None,
) -> list[str]:
    """The ``podman run`` / ``docker run`` argv for one node (foreground, removed on exit)."""
    path = runtime()
    if not path:
        raise RuntimeError("this host has no container runtime (podman or docker)")
    podman = Path(path).name == "podman"
    cmd = [path, "run", "--rm", "--name", name, "--init", "--pull=missing"]
    cmd += ["--cap-drop=ALL", "--security-opt=no-new-privileges", "--read-only"]
    cmd += ["--tmpfs", "/tmp:rw,exec,mode=1777", "--shm-size=2g"]  # noqa: S108
    cmd += ["--network", "host" if host_network else "none"]
    if uid is not None:
        cmd += ["--user", f"{uid}:{uid}"]
    for path_ in [work_dir, *mounts]:
        cmd += ["-v", f"{path_}:{path_}:rw"]
    # The SDK (workers/) is the only part of the checkout a job sees, read-only.
    cmd += ["-v", f"{PROJECT_ROOT / 'workers'}:/opt/cp/workers:ro"]
    cmd += ["-w", str(work_dir)]
    if gpu_indices:
        if podman:
            for index in gpu_indices:
                cmd += ["--device", f"nvidia.com/gpu={index}"]
        else:
            cmd += ["--gpus", "device=" + ",".join(str(i) for i in gpu_indices)]
    for key, value in sorted(env.items()):
        cmd += ["-e", f"{key}={value}"]
    return [*cmd, image, *argv]


def remove(name: str) -> None:
    """Stop and remove a node's container (the runtime, not our process tree, owns it)."""
    path = runtime()
    if path:
        subprocess.run([path, "rm", "-f", "-t", "0", name], capture_output=True, timeout=60)
