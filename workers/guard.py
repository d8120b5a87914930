"""``python -m workers.guard -- ARGV...``: runs a job's command and makes sure nothing of
it outlives its supervisor.

The launcher starts the guard in a session of its own (inside the workload's sandbox when
there is one), with a pipe on its stdin (the lifeline). The guard:

- starts ARGV as its child and exits with its exit code (128+N when killed by signal N);
- forwards SIGTERM/SIGINT to the child once (torchrun passes it on to every rank, and the
  job SDK turns it into "checkpoint and stop"), and so does a ``T`` written to the
  lifeline: the way the launcher asks, since a signal to bubblewrap would not reach it;
- becomes a child subreaper (Linux), so processes whose parent dies (torchrun's ranks run
  in sessions of their own) are re-parented to it and can still be found and killed;
- when the lifeline closes (the launcher asked for a hard stop, or its worker died, even by
  SIGKILL) kills every descendant with SIGKILL and exits;
- when the child exits, stops whatever descendants it left behind.

Standard library only, so it starts fast.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: orphans go to init instead
        pass


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process (Linux /proc)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: parse after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        table[int(entry)] = int(fields[1])
    return table


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, children before grandchildren."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    frontier = [pid]
    while frontier:
        frontier = [c for p in frontier for c in children.get(p, []) if c not in found]
        found.extend(frontier)
    return found


def _signal_all(sig: int) -> None:
    for pid in descendants(os.getpid()):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _hard_stop() -> None:
    _signal_all(signal.SIGKILL)
    os._exit(137)


def _watch_lifeline(on_term) -> None:
    try:
        while data := os.read(0, 4096):
            if b"T" in data:
                on_term()
    except OSError:
        pass
    _hard_stop()


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m workers.guard -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    _become_subreaper()
    try:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    except OSError as exc:
        print(f"cannot start {argv[0]!r}: {exc}", file=sys.stderr, flush=True)
        return 127
    forwarded = threading.Event()

    def forward(signum: int = signal.SIGTERM, _frame: object = None) -> None:
        if not forwarded.is_set():
            forwarded.set()
            try:
                child.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    threading.Thread(target=_watch_lifeline, args=(forward,), daemon=True).start()
    code = child.wait()
    # Leftovers (a rank that ignored its parent's exit): ask, then insist.
    if descendants(os.getpid()):
        _signal_all(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while descendants(os.getpid()) and time.monotonic() < deadline:
            _reap_all()
            time.sleep(0.05)
        _signal_all(signal.SIGKILL)
    _reap_all()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
