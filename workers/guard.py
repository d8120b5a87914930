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
- with ``--fence TERM,KILL[,AGE]``, fences itself: the launcher writes an ``R`` to the
  lifeline each time it renewed the node's lease, and when none came for TERM seconds the
  guard passes SIGTERM on, for KILL seconds it kills everything (both well before the lease
  can expire and the control plane places the job again). This holds when the worker is
  frozen (SIGSTOP, swapped out) or cut off from the database, which no lifeline closing
  would tell. AGE: how old the last renewal already was when the guard started;
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
#: The guard's exit code when it stopped the workload itself (no lease renewal came):
#: whatever the workload exited with, its run does not count as finished.
FENCED_EXIT = 250


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


def _hard_stop(code: int = 137) -> None:
    _signal_all(signal.SIGKILL)
    os._exit(code)


class Fence:
    """When the node's lease was last renewed, and what to do as that grows old."""

    def __init__(self, term_after: float, kill_after: float, age: float = 0.0) -> None:
        self.term_after = term_after
        self.kill_after = kill_after
        self.renewed = time.monotonic() - age
        self.tripped = False  # it stopped the workload

    def renew(self) -> None:
        self.renewed = time.monotonic()

    def watch(self, on_term) -> None:
        """Runs on a thread of its own: SIGTERM, then SIGKILL, if renewals stop coming."""
        termed = False
        while True:
            silent = time.monotonic() - self.renewed
            if silent >= self.kill_after:
                _say(f"no lease renewal for {silent:.1f} s: killing the workload (self-fencing)")
                _hard_stop(FENCED_EXIT)
            if silent >= self.term_after and not termed:
                termed = self.tripped = True
                _say(f"no lease renewal for {silent:.1f} s: stopping the workload (self-fencing)")
                on_term()
            time.sleep(0.05)


def parse_fence(text: str) -> Fence:
    parts = [float(p) for p in text.split(",")]
    if len(parts) not in (2, 3) or not 0 < parts[0] <= parts[1]:
        raise ValueError("--fence takes TERM,KILL[,AGE] seconds with 0 < TERM <= KILL")
    return Fence(*parts)


def _say(message: str) -> None:
    try:
        os.write(2, f"[guard] {message}\n".encode())
    except OSError:
        pass


def _watch_lifeline(on_term, fence: Fence | None) -> None:
    try:
        while data := os.read(0, 4096):
            if fence is not None and b"R" in data:
                fence.renew()
            if b"T" in data:
                on_term()
    except OSError:
        pass
    _hard_stop()


def main(argv: list[str]) -> int:
    fence = None
    if argv[:1] == ["--fence"] and len(argv) > 1:
        try:
            fence = parse_fence(argv[1])
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
        argv = argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print(
            "usage: python -m workers.guard [--fence TERM,KILL[,AGE]] -- COMMAND [ARGS...]",
            file=sys.stderr,
        )
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
    threading.Thread(target=_watch_lifeline, args=(forward, fence), daemon=True).start()
    if fence is not None:
        threading.Thread(target=fence.watch, args=(forward,), daemon=True).start()
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
    if fence is not None and fence.tripped:
        return FENCED_EXIT
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
