"""The job-facing SDK calls: report, save_checkpoint (atomic, safetensors),
latest_checkpoint, should_stop. They talk only to a local events file."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from workers import sdk


@pytest.fixture
def managed(tmp_path, monkeypatch):
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv("CP_ATTEMPT_ID", "1")
    monkeypatch.setenv("CP_EVENTS_FILE", str(events))
    monkeypatch.setenv("CP_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    monkeypatch.delenv("CP_RESUME_FROM", raising=False)
    monkeypatch.setenv("RANK", "0")
    return events


def read(events) -> list[dict]:
    return [json.loads(line) for line in events.read_text().splitlines()]


def test_report_writes_a_metrics_event_with_the_total(managed):
    sdk.report(5, total=100, loss=0.5, lr=torch.tensor(0.1))
    [event] = read(managed)
    assert event["type"] == "metrics" and event["step"] == 5 and event["total"] == 100
    assert event["values"] == {"loss": 0.5, "lr": pytest.approx(0.1)}


def test_save_checkpoint_is_atomic_safetensors_and_reported(managed, tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    path = sdk.save_checkpoint(state, 7, metrics={"loss": 1.5})
    assert path == tmp_path / "ckpt" / "step-7"
    assert torch.equal(load_file(str(path / "model.safetensors"))["w"], state["w"])
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["step-7"]  # no temp left
    [event] = read(managed)
    assert event["type"] == "checkpoint" and event["step"] == 7 and event["path"] == str(path)
    sdk.save_checkpoint(state, 12)
    assert sdk.latest_checkpoint() == tmp_path / "ckpt" / "step-12"


def test_latest_checkpoint_prefers_what_the_control_plane_says(managed, tmp_path, monkeypatch):
    assert sdk.latest_checkpoint() is None
    monkeypatch.setenv("CP_RESUME_FROM", str(tmp_path / "elsewhere"))
    assert sdk.latest_checkpoint() == tmp_path / "elsewhere"


def test_only_rank_zero_saves(managed, monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "1")
    assert sdk.save_checkpoint({"w": torch.zeros(1)}, 1) is None
    assert not (tmp_path / "ckpt").exists()


def test_should_stop_turns_sigterm_into_a_flag(managed):
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert sdk.should_stop() is False
        os.kill(os.getpid(), signal.SIGTERM)
        assert sdk.should_stop() is True
    finally:
        signal.signal(signal.SIGTERM, previous)
        sdk._stop.clear()


def test_latest_checkpoint_also_finds_the_recipes_directories(managed, tmp_path):
    root = tmp_path / "ckpt"
    for name in ("step_00000010", "step-9", ".tmp-step-11-1", "step_notanumber"):
        (root / name).mkdir(parents=True)
    assert sdk.latest_checkpoint() == root / "step_00000010"
