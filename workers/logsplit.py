"""A workload's output cut into lines the way a terminal shows it, so progress bars
(tqdm, Keras, pip) that redraw one line with carriage returns stay one line:

- a segment ends in ``\\n`` (a line) or ``\\r`` (a line that the next one overwrites);
- a ``\\r`` that ends text which does not look like a progress display (no ``n%``, no
  ``n/m``) ends a line instead: the ranks of a job share one pipe, and an unbuffered
  ``print`` writes its text and its newline in two writes, so another rank's bar (which
  starts with ``\\r``) can land between them; a terminal would garble that line, the log
  keeps it. Text written after a tqdm bar's closing ``]`` (before the next redraw) is the
  same splice, and is kept as its own line;
- ``collapse`` keeps a ``\\r`` line only when nothing follows it in the same flush: the log
  stores the bar's latest state once per flush, not each redraw, and the web log and
  ``cpctl logs`` show it as one updating line;
- ``progress_line`` is the bar being drawn now (tqdm writes ``\\r`` first, then the bar),
  so a quiet bar is still shown live;
- ``tqdm_progress`` reads ``n/total`` from a tqdm line, for a job that reports no progress
  of its own. A bar with a label ("Map: ", "Writing model shards: ") is a phase; one
  without (``tqdm(range(n))``, the Hugging Face Trainer's) is the main loop, and once one
  has been seen only such bars count.
"""

from __future__ import annotations

import re

MAX_LINE = 64 * 1024  # a longer run without a line end is cut (binary output, say)
_END = re.compile(rb"\r\n|\r|\n")
# " 45%|████▌     | 45/100 [00:01<00:02, 30.0it/s]" (also "45/100 [..." with no bar)
_TQDM = re.compile(r"(?:^|[|\s])(\d+)/(\d+) \[[0-9:?]+")
_REDRAWN = re.compile(rb"\d\s*%|\d/\d")  # what a line redrawn in place shows
_BAR_END = re.compile(rb"(?:^|[|\s])\d+/\d+ \[[0-9:?]+[^\]\r\n]*\]")
_LABEL = re.compile(r"^\s*\S.*?:\s+\d+%\|")  # "Map:  50%|" (no label: " 50%|")


class Splitter:
    def __init__(self) -> None:
        self.carry = b""
        self.after_cr = False  # the carry started after a carriage return: a redrawn line

    def feed(self, data: bytes) -> list[bytes]:
        """The complete segments ``data`` finishes (``\\r\\n`` becomes ``\\n``)."""
        text = self.carry + data
        out: list[bytes] = []
        start = 0
        for match in _END.finditer(text):
            end = match.group(0)
            if end == b"\r" and match.end() == len(text):
                break  # maybe the first half of \r\n: wait for the next byte
            line = text[start : match.start()]
            if end == b"\r":
                out.extend(_redrawn(line))
            else:
                out.append(line + b"\n")
            self.after_cr = end == b"\r"
            start = match.end()
        self.carry = text[start:]
        while len(self.carry) > MAX_LINE:
            out.append(self.carry[:MAX_LINE] + b"\n")
            self.carry = self.carry[MAX_LINE:]
            self.after_cr = False
        return out

    def progress_line(self) -> bytes | None:
        """The line being redrawn now (a bar between two updates), or None."""
        text = self.carry.rstrip(b"\r")
        if self.after_cr and text and _REDRAWN.search(text):
            return _redrawn(text)[0].rstrip(b"\n\r") + b"\r"
        return None

    def rest(self) -> list[bytes]:
        """What is left when the output ends."""
        text, self.carry = self.carry, b""
        text = text.rstrip(b"\r")
        return [text + b"\n"] if text else []


def _redrawn(line: bytes) -> list[bytes]:
    """A segment that a carriage return ended: a redraw, or a line another process spliced
    into one (see the module's docstring)."""
    if line and _REDRAWN.search(line) is None:
        return [line + b"\n"]
    bar = _BAR_END.search(line)
    if bar is not None and line[bar.end() :].strip():
        return [line[: bar.end()] + b"\r", line[bar.end() :].lstrip() + b"\n"]
    return [line + b"\r"]


def collapse(segments: list[bytes]) -> list[bytes]:
    """Drop the ``\\r`` lines that a later segment overwrites, and empty ones."""
    kept = []
    for i, segment in enumerate(segments):
        if segment.endswith(b"\r") and (i + 1 < len(segments) or segment == b"\r"):
            continue
        kept.append(segment)
    return kept


def tqdm_progress(segment: bytes) -> tuple[int, int] | None:
    """(n, total) from a tqdm progress line, else None."""
    found = _bar(segment)
    return found[:2] if found else None


def _bar(segment: bytes) -> tuple[int, int, bool] | None:
    """(n, total, whether the bar has a label)."""
    if b"/" not in segment or b"[" not in segment:
        return None
    text = segment.decode("utf-8", "replace")
    match = _TQDM.search(text)
    if not match:
        return None
    n, total = int(match.group(1)), int(match.group(2))
    if not 0 <= n <= total or total <= 0:
        return None
    return n, total, bool(_LABEL.match(text))


class LogBuffer:
    """What a node's output has not yet been stored of, cut and collapsed as above. A bar
    being redrawn is stored at most every ``redraw_seconds``; its latest ``n/total`` is
    ``progress``."""

    def __init__(self, chunk_bytes: int, flush_seconds: float, redraw_seconds: float = 1.0) -> None:
        self.splitter = Splitter()
        self.segments: list[bytes] = []
        self.size = 0
        self.chunk_bytes, self.flush_seconds = chunk_bytes, flush_seconds
        self.redraw_seconds = redraw_seconds
        self.last_flush = 0.0  # the first line after a quiet spell goes out at once
        self.last_redraw = 0.0
        self.redrawn: bytes | None = None  # the bar state stored last
        self.progress: tuple[int, int] | None = None
        self.main_loop = False  # an unlabeled bar was seen: labeled ones no longer count

    def _saw(self, segment: bytes) -> None:
        found = _bar(segment)
        if found is None:
            return
        n, total, labeled = found
        if not labeled:
            self.main_loop = True
        if not labeled or not self.main_loop:
            self.progress = (n, total)

    def add(self, data: bytes) -> None:
        for segment in self.splitter.feed(data):
            self.segments.append(segment)
            self.size += len(segment)
            self._saw(segment)

    def _bar(self) -> bytes | None:
        current = self.splitter.progress_line()
        if current is not None:
            self._saw(current)
        return current

    def due(self, now: float) -> bool:
        if now - self.last_flush < self.flush_seconds and self.size < self.chunk_bytes:
            return False
        if self.segments:
            return True
        bar = self._bar()
        return (
            bar is not None
            and bar != self.redrawn
            and now - self.last_redraw >= self.redraw_seconds
        )

    def take(self, now: float) -> list[bytes]:
        kept = collapse(self.segments)
        last = kept.pop() if kept and kept[-1].endswith(b"\r") else None
        bar = self._bar() or last  # the bar being drawn now, else its last complete redraw
        if (
            bar is not None
            and bar != self.redrawn
            and now - self.last_redraw >= self.redraw_seconds
        ):
            kept.append(bar)
            self.redrawn, self.last_redraw = bar, now
        self.segments, self.size, self.last_flush = [], 0, now
        return kept

    def end(self) -> list[bytes]:
        """Everything left, when the output has ended."""
        for segment in self.splitter.rest():
            self.segments.append(segment)
            self._saw(segment)
        kept = collapse(self.segments)
        self.segments, self.size = [], 0
        return kept
