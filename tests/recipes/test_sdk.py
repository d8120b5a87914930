"""workers.sdk: environment contract, the events file, and SIGTERM -> stop flag."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from workers import sdk


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CP_ATTEMPT_ID", "CP_CHECKPOINT_DIR", "CP_RESUME_FROM", "CP_EVENTS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("RANK", raising=False)


def test_unmanaged_defaults(tmp_path: Path) -> None:
    assert not sdk.is_managed()
    assert sdk.checkpoint_dir() is None
    assert sdk.resume_from() is None
    assert sdk.is_rank_zero()
    sdk.report_metrics(1, {"loss": 1.0})  # no events file: nothing to write, no error
    sdk.report_checkpoint(tmp_path, 1)
    assert list(tmp_path.iterdir()) == []


def test_managed_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CP_ATTEMPT_ID", "42")
    monkeypatch.setenv("CP_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    monkeypatch.setenv("CP_RESUME_FROM", str(tmp_path / "ckpt" / "step_00000010"))
    assert sdk.is_managed()
    assert sdk.checkpoint_dir() == tmp_path / "ckpt"
    assert sdk.resume_from() == tmp_path / "ckpt" / "step_00000010"


def test_events_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv("CP_EVENTS_FILE", str(path))
    sdk.report_metrics(3, {"loss": 2.5, "bad": float("nan"), "n": 7}, kind="train", total=9)
    sdk.report_checkpoint(tmp_path / "step_00000003", 3, {"loss": 2.5})
    sdk.report_metrics(3, {"eval_loss": 2.0}, kind="eval")
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert first["total"] == 9 and "total" not in third and third["kind"] == "eval"
    assert first["v"] == 1 and first["type"] == "metrics" and first["kind"] == "train"
    assert first["step"] == 3 and isinstance(first["time"], float)
    assert first["values"] == {"loss": 2.5, "bad": None, "n": 7.0}
    assert second["type"] == "checkpoint" and second["step"] == 3
    assert second["path"] == str((tmp_path / "step_00000003").resolve())
    assert second["metrics"] == {"loss": 2.5}


def test_events_only_from_rank_zero(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv("CP_EVENTS_FILE", str(path))
    monkeypatch.setenv("RANK", "1")
    assert not sdk.is_rank_zero()
    sdk.report_metrics(1, {"loss": 1.0})
    assert not path.exists()


def test_sigterm_sets_stop_flag() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    sdk._stop.clear()
    try:
        sdk.install_signal_handlers()
        assert not sdk.stop_requested()
        os.kill(os.getpid(), signal.SIGTERM)  # would kill the test run without the handler
        assert sdk.stop_requested()
    finally:
        signal.signal(signal.SIGTERM, previous)
        sdk._stop.clear()
