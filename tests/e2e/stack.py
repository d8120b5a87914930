"""Start the real stack (``python -m controlplane.stack``, what ``make run`` runs) for tests.

Each ``Stack`` gets its own var directory, free ports, a unique host name and, when the
session runs against PostgreSQL, a database of its own (created and dropped here), so it
never touches the developer's ``var/`` or another run's data. The fake NVML library is on
its PYTHONPATH, so its worker reports the GPUs ``fake_gpus`` asks for.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import httpx
import psutil

from tests.plugin import ORIGINAL_ENV, free_port

ROOT = Path(__file__).resolve().parents[2]
FAKE_NVML_DIR = ROOT / "tests" / "fake_nvml"
ADMIN_PASSWORD = "e2e-admin-password"


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies (Linux), so no stack outlives it."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class PostgresDatabase:
    """A throw-away database on the server named by ``DATABASE_URL``."""

    def __init__(self, url: str) -> None:
        import psycopg

        self._psycopg = psycopg
        self.server_url = url
        self.name = f"cp_e2e_{uuid.uuid4().hex[:10]}"
        parts = urlparse(url)
        self.url = urlunparse(parts._replace(path=f"/{self.name}"))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        with self._psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


# The stacks of one test run share their collected static files (hashing and gzipping
# plotly.js takes seconds; controlplane.staticstorage skips it when nothing changed).
STATIC_ROOT = Path(tempfile.gettempdir()) / f"cp-e2e-static-{os.getuid()}"


class Stack:
    def __init__(self, *, fake_gpus: int = 2, extra_env: dict[str, str] | None = None) -> None:
        self.var_dir = Path(tempfile.mkdtemp(prefix="cp-e2e-"))
        self.hostname = f"e2e-{uuid.uuid4().hex[:8]}"
        self.http_port = free_port()
        self.redis_port = free_port()
        self.database: PostgresDatabase | None = None
        keep = ("CP_BROKER_URL",)  # CI runs the stack once with RabbitMQ as the broker
        env = {
            k: v
            for k, v in ORIGINAL_ENV.items()
            if k in keep or not k.startswith(("CP_", "FAKE_NVML"))
        }
        if env.get("DATABASE_URL", "").startswith("postgres"):
            self.database = PostgresDatabase(env["DATABASE_URL"])
            env["DATABASE_URL"] = self.database.url
        env.update(
            {
                "CP_VAR_DIR": str(self.var_dir),
                "CP_STATIC_ROOT": str(STATIC_ROOT),  # collected once for the whole run
                "CP_HOSTNAME": self.hostname,
                "CP_CACHE_PREFIX": f"cp-{self.hostname}",
                "CP_HTTP_PORT": str(self.http_port),
                "CP_EMBEDDED_REDIS_PORT": str(self.redis_port),
                "CP_ADMIN_PASSWORD": ADMIN_PASSWORD,
                "CP_WORKER_HEARTBEAT_INTERVAL": "1",
                "PYTHONPATH": os.pathsep.join([str(FAKE_NVML_DIR), str(ROOT)]),
                "FAKE_NVML_GPUS": str(fake_gpus),
                **(extra_env or {}),
            }
        )
        self.env = env
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.proc: subprocess.Popen | None = None
        self.runs = 0
        self.log_path = self.var_dir / "stack-0.log"
        self.workers: dict[str, subprocess.Popen] = {}

    @property
    def redis_url(self) -> str:
        if self.env.get("REDIS_URL"):
            return self.env["REDIS_URL"]
        # The embedded Redis requires the password the stack generated into its var/.
        password = (self.var_dir / "redis_password").read_text().strip()
        return f"redis://:{password}@127.0.0.1:{self.redis_port}/0"

    @property
    def broker_url(self) -> str:
        return self.env.get("CP_BROKER_URL") or self.redis_url

    def start(self) -> Stack:
        self.runs += 1
        # Output goes to a file, not a pipe: if the test process dies, the stack never
        # blocks on a full pipe, and it gets SIGTERM (parent-death signal) and stops.
        self.log_path = self.var_dir / f"stack-{self.runs}.log"
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controlplane.stack"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, like a terminal's job
                preexec_fn=_die_with_parent,
            )
        return self

    def log(self) -> str:
        """What the current run of the stack printed (its last 200 lines)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "".join(text.splitlines(keepends=True)[-200:])

    def wait_for_output(self, text: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not printed in {timeout} s:\n{self.log()}")
            time.sleep(0.1)

    def wait_ready(self, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"the stack exited early:\n{self.log()}")
            try:
                response = httpx.get(f"{self.url}/readyz", timeout=3)
                last = response.json()
                if response.status_code == 200:
                    return last
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.25)
        raise AssertionError(f"not ready in {timeout} s: {last}\n{self.log()}")

    def processes(self) -> list[psutil.Process]:
        assert self.proc is not None
        return psutil.Process(self.proc.pid).children(recursive=True)

    def supervisorctl(self, *args: str) -> str:
        """What ``supervisorctl`` says about the running stack's processes."""
        config = self.var_dir / "supervisor" / "supervisord.conf"
        result = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(config), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return result.stdout

    def program_pid(self, name: str) -> int:
        """The pid of the stack's process ``name`` (web, worker, beat, redis); 0 if none."""
        answer = self.supervisorctl("pid", name).strip()
        return int(answer) if answer.isdigit() else 0

    def manage(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start_worker(self, name: str, wrap: tuple[str, ...] = (), **env: str) -> subprocess.Popen:
        """One more Celery worker host (its own CP_HOSTNAME), as a worker machine runs it;
        ``wrap`` goes before the command (``ip netns exec NS``: a host of its own network)."""
        environ = {
            **self.env,
            "CP_HOSTNAME": name,
            "CP_WORKER_CONTROL_QUEUE": "false",
            "CP_WORKER_CPU_SLOTS": "2",
            **env,
        }
        log = open(self.var_dir / f"worker-{name}.log", "ab")
        proc = subprocess.Popen(
            [*wrap, sys.executable, "-m", "celery", "-A", "controlplane", "worker",
             "--loglevel", "INFO",
             "--hostname", f"cp@{name}", "--without-mingle", "--without-gossip"],
            cwd=ROOT,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # a test runner killed outright leaves no host
        )  # fmt: skip
        self.workers[name] = proc
        return proc

    def worker_log(self, name: str) -> str:
        path = self.var_dir / f"worker-{name}.log"
        return path.read_text(errors="replace")[-20000:] if path.exists() else ""

    def kill_worker(self, name: str) -> None:
        """SIGKILL the worker's main process only, as if its host died under it."""
        self.workers[name].kill()
        self.workers[name].wait(timeout=10)

    def freeze_worker(self, name: str) -> None:
        """SIGSTOP the worker (its whole process group: not the jobs, which run in sessions
        of their own), as a host that swaps, hangs or is paused looks from outside."""
        os.killpg(self.workers[name].pid, signal.SIGSTOP)

    def thaw_worker(self, name: str) -> None:
        os.killpg(self.workers[name].pid, signal.SIGCONT)

    def stop_workers(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.workers.clear()

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C: SIGINT to the stack's process group; its exit code."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        leftovers = self.processes()
        os.killpg(self.proc.pid, signal.SIGKILL)
        for proc in leftovers:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc.wait(timeout=10)

    def close(self) -> None:
        for proc in self.workers.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.kill()
        if self.database is not None:
            self.database.drop()
