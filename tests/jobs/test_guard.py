"""The guard as a real process: it stops its workload itself when the lease renewals its
launcher passes on stop coming (a frozen or cut-off worker), and not while they come."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from workers.guard import FENCED_EXIT

# A workload that checkpoints on SIGTERM (prints, exits 0), like the SDK's.
POLITE = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: (print('term', flush=True), sys.exit(0)))\n"
    "print('up', flush=True)\n"
    "while True: time.sleep(0.05)\n"
)
# One that ignores SIGTERM: only SIGKILL stops it.
STUBBORN = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('up', flush=True)\n"
    "while True: time.sleep(0.05)\n"
)


def guard(code: str, fence: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.guard", "--fence", fence, "--", sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"up\n"
    return proc


def renew_for(proc: subprocess.Popen, seconds: float) -> None:
    assert proc.stdin is not None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        proc.stdin.write(b"R")
        proc.stdin.flush()
        time.sleep(0.1)


def test_renewals_keep_the_workload_running_and_their_end_stops_it():
    proc = guard(POLITE, "0.6,1.2")
    renew_for(proc, 2.0)  # well past the fence, but renewed all along
    assert proc.poll() is None
    stopped = time.monotonic()
    code = proc.wait(timeout=5)
    took = time.monotonic() - stopped
    output = proc.stdout.read().decode()
    assert code == FENCED_EXIT  # not the workload's 0: its run did not finish
    assert "term" in output and "self-fencing" in output
    assert 0.4 < took < 1.2, took
    proc.stdin.close()


def test_a_workload_that_ignores_sigterm_is_killed_at_the_second_bound():
    proc = guard(STUBBORN, "0.3,0.9,0.2")  # the last renewal was already 0.2 s old
    child = psutil.Process(proc.pid).children()[0]
    started = time.monotonic()
    assert proc.wait(timeout=5) == FENCED_EXIT
    assert 0.5 < time.monotonic() - started < 1.2
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert "killing the workload" in proc.stdout.read().decode()
    proc.stdin.close()


def test_bad_fence_arguments_are_refused():
    for bad in ("1", "2,1", "0,1", "a,b"):
        result = subprocess.run(
            [sys.executable, "-m", "workers.guard", "--fence", bad, "--", "true"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2, bad
