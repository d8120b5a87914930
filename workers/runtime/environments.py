"""Workload environments: virtual environments built with uv, cached per host.

A spec's ``environment: {pip: [...]}`` (or ``{requirements: requirements.txt}``, a file of
the upload) becomes a virtual environment under ``CP_ENV_CACHE_DIR/<key>``, where the key
is the hash of what was asked (packages, Python, inherit) and of the worker's own base
environment. Every job that asks for the same set on this host shares it; ten jobs asking
at once build it once (a file lock); least-recently-used environments not in use are
removed when the cache passes ``CP_ENV_CACHE_MAX_BYTES``.

Layering (``inherit: true``, the default): the new environment sees the worker's packages
(torch, CUDA libraries, transformers...) through a ``.pth`` file, and uv installs only what
is missing. uv resolves the request against the worker's installed distributions, given
to it as static metadata (``dependency-metadata``) and pinned as constraints, so a
requirement on torch is satisfied by the torch already there (a CPU or CUDA build alike)
instead of downloading another one. ``inherit: false`` builds an isolated environment.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from jobs.spec import RequirementError, check_requirement

META = "cp-env.json"
BASE_PTH = "_cp_base_environment.pth"
MAX_REQUIREMENTS = 500


class BuildError(RuntimeError):
    """The environment could not be built; the message is what the job's log shows."""


class Stopped(RuntimeError):
    """The attempt was stopped (or fenced) while its environment was being prepared."""


@dataclass
class Request:
    """What a node asked for."""

    packages: list[str]
    python: str = ""
    inherit: bool = True

    def key(self) -> str:
        data = {
            "packages": sorted(self.packages),
            "python": self.python,
            "inherit": self.inherit,
            "base": base_fingerprint() if self.inherit else "",
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class Environment:
    key: str
    path: Path
    python: str
    packages: list[str] = field(default_factory=list)  # what was installed, name==version
    cached: bool = False
    build_seconds: float = 0.0

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    def describe(self) -> dict:
        """What an attempt records (the API and pages show it)."""
        return {
            "kind": "venv",
            "key": self.key,
            "python": self.python,
            "packages": self.packages,
            "cached": self.cached,
            "build_seconds": round(self.build_seconds, 2),
        }


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


_base: list[tuple[str, str, list[str]]] | None = None


def base_distributions() -> list[tuple[str, str, list[str]]]:
    """(name, version without local label, requires) of the worker's environment."""
    global _base
    if _base is None:
        seen: dict[str, tuple[str, str, list[str]]] = {}
        for dist in importlib.metadata.distributions():
            name = dist.metadata["Name"]
            if not name or _normalize(name) in seen:
                continue
            seen[_normalize(name)] = (name, dist.version.split("+")[0], list(dist.requires or []))
        _base = sorted(seen.values())
    return _base


def base_fingerprint() -> str:
    text = json.dumps([(n, v) for n, v, _ in base_distributions()])
    return hashlib.sha256(f"{sys.version}|{text}".encode()).hexdigest()[:16]


def request_from_spec(environment: dict, work_dir: Path) -> Request | None:
    """The node's request, or None when the spec asks for no environment of its own.
    Reads ``requirements`` from the job's code; raises BuildError for a bad file."""
    if not environment or environment.get("image"):
        return None
    packages = list(environment.get("pip") or [])
    if environment.get("requirements"):
        path = (work_dir / environment["requirements"]).resolve()
        if not path.is_relative_to(work_dir.resolve()) or not path.is_file():
            raise BuildError(
                f"requirements file {environment['requirements']!r} is not in the job's code"
            )
        if path.stat().st_size > 256 * 1024:
            raise BuildError("the requirements file is over 256 KiB")
        for number, raw in enumerate(path.read_text(errors="replace").splitlines(), 1):
            line = raw.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            try:
                packages.append(check_requirement(line))
            except RequirementError as exc:
                raise BuildError(f"{environment['requirements']}, line {number}: {exc}") from None
    if not packages:
        return None
    if len(packages) > MAX_REQUIREMENTS:
        raise BuildError(f"at most {MAX_REQUIREMENTS} requirements")
    return Request(
        packages=packages,
        python=str(environment.get("python") or ""),
        inherit=bool(environment.get("inherit", True)),
    )


def uv_binary() -> str:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            raise BuildError("uv is not installed on this worker") from None
        return found


def _dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


class Builder:
    """Builds or reuses one environment, streaming uv's output to ``log`` and calling
    ``keep_alive`` (which renews the node's lease; False means stop) while it works."""

    def __init__(self, log: Callable[[str], None], keep_alive: Callable[[], bool]) -> None:
        self.log = log
        self.keep_alive = keep_alive
        self.root = Path(settings.ENV_CACHE_DIR)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lease_fd: int | None = None

    # --- the public calls ---------------------------------------------------------------

    def ensure(self, request: Request) -> Environment:
        """The environment for ``request``: reused when this host has it, else built.
        Holds a shared lock on it until ``release()`` (garbage collection skips it)."""
        key = request.key()
        lock_path = self.root / f"{key}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            env = self._reuse(key, fd)
            told = built = False
            while env is None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    # Another job builds it (wait), or it is built and in use (share it).
                    env = self._reuse(key, fd)
                    if env is None:
                        if not told:
                            self.log(f"[environment] waiting for another job's build of {key}\n")
                            told = True
                        if not self.keep_alive():
                            raise Stopped("stopped while waiting for the environment") from None
                        time.sleep(0.2)
                    continue
                try:
                    env = self._load(key)  # built by another job while we waited
                    if env is None:
                        env = self._build(key, request)
                        built = True
                finally:
                    fcntl.flock(fd, fcntl.LOCK_SH)  # from building it to using it
        except BaseException:
            os.close(fd)
            raise
        self._lease_fd = fd
        os.utime(self.root / f"{key}.lock")  # last use, for the LRU collection
        if built:  # only a build makes the cache grow
            self.collect_garbage(keep=key)
        return env

    def release(self) -> None:
        if self._lease_fd is not None:
            os.close(self._lease_fd)
            self._lease_fd = None

    def collect_garbage(self, keep: str = "") -> list[str]:
        """Remove least-recently-used environments, not in use, until under the cap."""
        entries = []
        for meta in self.root.glob(f"*/{META}"):
            key = meta.parent.name
            lock = self.root / f"{key}.lock"
            used = lock.stat().st_mtime if lock.exists() else meta.stat().st_mtime
            try:
                size = int(json.loads(meta.read_text()).get("size_bytes", 0))
            except (OSError, ValueError):
                size = 0
            entries.append((used, key, size))
        total = sum(size for _, _, size in entries)
        removed = []
        for _used, key, size in sorted(entries):
            if total <= settings.ENV_CACHE_MAX_BYTES:
                break
            if key == keep:
                continue
            fd = os.open(self.root / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # in use by a running job
            try:
                shutil.rmtree(self.root / key, ignore_errors=True)
                (self.root / f"{key}.lock").unlink(missing_ok=True)
            finally:
                os.close(fd)
            total -= size
            removed.append(key)
        return removed

    # --- internals ----------------------------------------------------------------------

    def _reuse(self, key: str, fd: int) -> Environment | None:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # being built right now
        env = self._load(key)
        if env is None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return env

    def _load(self, key: str) -> Environment | None:
        meta_path = self.root / key / META
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None
        env = Environment(
            key=key,
            path=self.root / key,
            python=meta.get("python", ""),
            packages=list(meta.get("packages", [])),
            cached=True,
        )
        self.log(f"[environment] reusing {key} ({len(env.packages)} package(s) of its own)\n")
        return env

    def _run(self, argv: list[str], what: str, extra_env: dict[str, str]) -> str:
        """Run a uv command, streaming its output into the job's log; its output back."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "UV_CACHE_DIR": str(settings.ENV_UV_CACHE_DIR),
            "UV_NO_PROGRESS": "1",
            "UV_PYTHON_DOWNLOADS": "never",
            **{k: v for k, v in os.environ.items() if k.startswith(("UV_INDEX", "UV_EXTRA"))},
            **{k: os.environ[k] for k in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "SSL_CERT_FILE")
               if k in os.environ},
            **extra_env,
        }  # fmt: skip
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        lines: list[str] = []

        def read() -> None:
            assert proc.stdout is not None
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", "replace")
                lines.append(line)
                self.log(f"[environment] {line}")

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + settings.ENV_BUILD_TIMEOUT
        while proc.poll() is None:
            try:
                proc.wait(timeout=0.25)
            except subprocess.TimeoutExpired:
                pass
            stop = not self.keep_alive()
            if stop or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                if stop:
                    raise Stopped(f"stopped during {what}")
                raise BuildError(
                    f"{what} took longer than CP_ENV_BUILD_TIMEOUT "
                    f"({settings.ENV_BUILD_TIMEOUT:.0f} s)"
                )
        reader.join(timeout=5)
        output = "".join(lines)
        if proc.returncode != 0:
            tail = "\n".join(output.strip().splitlines()[-12:])
            raise BuildError(f"{what} failed:\n{tail}")
        return output

    def _build(self, key: str, request: Request) -> Environment:
        started = time.monotonic()
        base_python = f"{sys.version_info.major}.{sys.version_info.minor}"
        python = request.python or base_python
        if request.inherit and python != base_python:
            raise BuildError(
                f"inherit: true layers on the worker's Python {base_python}; python: {python} "
                "needs inherit: false"
            )
        self.log(
            f"[environment] building {key}: {len(request.packages)} requirement(s), "
            f"Python {python}, {'layered on' if request.inherit else 'isolated from'} "
            "the worker's environment\n"
        )
        uv = uv_binary()
        staging = self.root / f".{key}.building"
        target = build = self.root / key
        for leftover in (staging, target):  # of a build that died half-way
            shutil.rmtree(leftover, ignore_errors=True)
        staging.mkdir(mode=0o700)
        try:
            interpreter = sys.executable if python == base_python else python
            self._run([uv, "venv", "--quiet", "--python", interpreter, str(build)], "uv venv", {})
            env_python = str(build / "bin" / "python")
            wanted = staging / "requirements.in"
            wanted.write_text("\n".join(request.packages) + "\n")
            if request.inherit:
                missing = self._resolve_layered(uv, wanted, env_python, staging)
            else:
                missing = staging / "requirements.in"
            if missing.read_text().strip():
                argv = [uv, "pip", "install", "--python", env_python, "-r", str(missing)]
                if request.inherit:
                    argv.append("--no-deps")  # resolved above, against the base
                self._run(argv, "uv pip install", {})
            if request.inherit:
                site = Path(
                    sysconfig.get_path("purelib", vars={"base": str(build), "platbase": str(build)})
                )
                base_paths = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
                (site / BASE_PTH).write_text("\n".join(sorted(base_paths)) + "\n")
            installed = self._run(
                [uv, "pip", "freeze", "--python", env_python], "uv pip freeze", {}
            )
            packages = [line.strip() for line in installed.splitlines() if "==" in line]
            meta = {
                "key": key,
                "python": python,
                "inherit": request.inherit,
                "requested": request.packages,
                "packages": packages,
                "built_at": time.time(),
                "build_seconds": time.monotonic() - started,
            }
            meta["size_bytes"] = _dir_size(target)
            tmp = target / f".{META}.tmp"
            tmp.write_text(json.dumps(meta, indent=1))
            os.replace(tmp, target / META)  # the marker: complete from here on
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        seconds = time.monotonic() - started
        self.log(f"[environment] built {key} in {seconds:.1f} s: {', '.join(packages)}\n")
        return Environment(
            key=key, path=target, python=python, packages=packages, build_seconds=seconds
        )

    def _resolve_layered(self, uv: str, wanted: Path, env_python: str, staging: Path) -> Path:
        """What to install on top of the base: resolve against the base's real metadata
        (pinned), then keep only what the base does not already have."""
        base = base_distributions()
        constraints = staging / "base-constraints.txt"
        constraints.write_text("".join(f"{n}=={v}\n" for n, v, _ in base))
        config = staging / "uv.toml"
        config.write_text(
            "".join(
                f"[[dependency-metadata]]\nname = {json.dumps(n)}\nversion = {json.dumps(v)}\n"
                f"requires-dist = {json.dumps(reqs)}\n\n"
                for n, v, reqs in base
            )
        )
        resolved = staging / "resolved.txt"
        self._run(
            [uv, "pip", "compile", "--quiet", "--config-file", str(config), str(wanted),
             "-c", str(constraints), "--python", env_python, "-o", str(resolved)],
            "resolving the requirements",
            {},
        )  # fmt: skip
        have = {(_normalize(n), v) for n, v, _ in base}
        missing = []
        for line in resolved.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "==" not in line:
                continue
            name, _, version = line.partition("==")
            version = version.split(";")[0].strip()
            if (_normalize(name.strip()), version) not in have:
                missing.append(line)
        out = staging / "missing.txt"
        out.write_text("\n".join(missing) + ("\n" if missing else ""))
        return out
