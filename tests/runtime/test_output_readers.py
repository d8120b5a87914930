"""What the launcher reads from a workload besides the SDK: its output cut the way a
terminal shows it (progress bars stay one line), and TensorBoard event files."""

from __future__ import annotations

import os
import time

import pytest

from workers.logsplit import LogBuffer, Splitter, collapse, tqdm_progress
from workers.tbevents import EventWatcher


def test_carriage_returns_make_lines_a_later_one_overwrites():
    splitter = Splitter()
    segments = []
    for chunk in (b"start\r", b"\n", b"\r 10%| 1/10 [00:00<00:01]", b"\r 20%| 2/10 [00:00<00:01]",
                  b"\r100%| 10/10 [00:01<00:00]\nok\n"):  # fmt: skip
        segments += splitter.feed(chunk)
    assert segments[0] == b"start\n"  # \r\n split across reads is still one line end
    assert collapse(segments) == [b"start\n", b"100%| 10/10 [00:01<00:00]\n", b"ok\n"]
    assert [tqdm_progress(s) for s in segments if tqdm_progress(s)] == [(1, 10), (2, 10), (10, 10)]
    assert tqdm_progress(b"loss 1/2 done\n") is None and tqdm_progress(b"11/10 [00:00]") is None


def test_a_ranks_line_split_by_another_ranks_bar_is_kept():
    # Two ranks on one pipe, unbuffered: rank 1's print writes its text, rank 0's bar
    # redraws (\r first), then rank 1's newline arrives and ends rank 0's bar line.
    # Either before the bar started or after it was drawn once.
    for first in (b"", b"\rsave:   0%| 0/1 [00:00<?, ?it/s]  "):
        buffer = LogBuffer(chunk_bytes=32768, flush_seconds=0.0, redraw_seconds=1.0)
        stored = []
        for chunk in (first, b"rank 1 of 2: trained 4 steps", b"\rsave: 100%| 1/1 [00:00<00:00]",
                      b"\n", b"rank 0 of 2: trained 4 steps", b"\n"):  # fmt: skip
            buffer.add(chunk)
            stored += buffer.take(100.0)  # one instant: a bar's redraw is stored once at most
        stored += buffer.end()
        lines = b"".join(stored).replace(b"\r", b"\n").splitlines()
        assert lines.count(b"rank 1 of 2: trained 4 steps") == 1, stored
        assert lines[-2:] == [b"save: 100%| 1/1 [00:00<00:00]", b"rank 0 of 2: trained 4 steps"]


def test_a_partial_line_waits_unless_it_is_a_bar_being_redrawn():
    splitter = Splitter()
    assert splitter.feed(b"Password: ") == [] and splitter.progress_line() is None
    splitter = Splitter()
    splitter.feed(b"\r 50%| 5/10 [00:02<00:02]")
    assert splitter.progress_line() == b" 50%| 5/10 [00:02<00:02]\r"
    assert splitter.rest() == [b" 50%| 5/10 [00:02<00:02]\n"]
    huge = Splitter().feed(b"x" * 200_000)
    assert [len(s) for s in huge] == [65537, 65537, 65537]  # cut, never unbounded


def test_a_bar_is_stored_at_most_once_a_second_and_its_progress_kept():
    buffer = LogBuffer(chunk_bytes=32768, flush_seconds=0.1, redraw_seconds=1.0)
    stored = []
    now = 100.0
    buffer.add(b"begin\n")
    for i in range(50):  # 5 s of redraws, 10 a second
        buffer.add(f"\r{i * 2}%| {i}/50 [00:00<00:05]".encode())
        now += 0.1
        if buffer.due(now):
            stored += buffer.take(now)
    buffer.add(b"\r100%| 50/50 [00:05<00:00]\ndone\n")
    stored += buffer.take(now + 0.1) + buffer.end()
    bars = [s for s in stored if s.endswith(b"\r")]
    assert 4 <= len(bars) <= 6, stored
    assert stored[0] == b"begin\n" and stored[-2:] == [b"100%| 50/50 [00:05<00:00]\n", b"done\n"]
    assert buffer.progress == (50, 50)


def test_tensorboard_scalars_are_read_as_they_are_written_and_links_ignored(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    old = tmp_path / "old"
    writer = SummaryWriter(str(old))
    writer.add_scalar("train/loss", 9.0, 0)
    writer.close()
    [old_file] = old.iterdir()
    os.utime(old_file, (time.time() - 3600, time.time() - 3600))  # an earlier attempt's
    watcher = EventWatcher([tmp_path], since=time.time() - 60)
    writer = SummaryWriter(str(tmp_path / "runs" / "a"))
    for step in range(3):
        writer.add_scalar("train/loss", 1.0 / (step + 1), step)
        writer.add_text("note", "not a scalar", step)
    writer.flush()
    outside = tmp_path.parent / f"{tmp_path.name}-foreign"
    outside.mkdir()
    foreign = SummaryWriter(str(outside))
    foreign.add_scalar("stolen", 1.0, 0)
    foreign.close()
    [foreign_file] = outside.iterdir()
    (tmp_path / "runs" / "events.out.tfevents.link").symlink_to(foreign_file)
    first = watcher.poll(now=0.0)  # not the old file, not the link, not the text
    assert sorted(first) == [0, 1, 2] and all(list(v) == ["train/loss"] for v in first.values())
    assert [first[s]["train/loss"] for s in (0, 1, 2)] == pytest.approx([1.0, 0.5, 1 / 3])
    writer.add_scalar("train/loss", 0.1, 3)
    writer.add_scalar("eval/accuracy", 0.75, 3)
    writer.flush()
    assert watcher.poll(now=1.0) == {3: {"train/loss": pytest.approx(0.1), "eval/accuracy": 0.75}}
    assert watcher.poll(now=2.0) == {}
    writer.close()


def test_the_main_loops_bar_is_the_progress_not_a_labelled_phase_after_it():
    buffer = LogBuffer(chunk_bytes=32768, flush_seconds=0.1)
    buffer.add(b"Map: 100%|#####| 200/200 [00:00<00:00, 900it/s]\n")
    assert buffer.progress == (200, 200)  # a phase counts while no main loop was seen
    buffer.add(b"\r 50%|##   | 2/4 [00:00<00:00]\r100%|#####| 4/4 [00:00<00:00]\n")
    buffer.add(b"Writing model shards: 100%|#####| 1/1 [00:00<00:00, 657it/s]\n")
    assert buffer.progress == (4, 4)
