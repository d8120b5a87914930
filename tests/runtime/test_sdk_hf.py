"""The Hugging Face Trainer callback of the job SDK writes the events the launcher reads:
hyperparameters, train and eval metrics with the planned total, and a stop asked by the
control plane turns into "save, then stop"."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from transformers import TrainerControl, TrainerState

from workers import sdk
from workers.sdk_hf import ControlPlaneCallback


@pytest.fixture
def events(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv("CP_EVENTS_FILE", str(path))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("CP_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    yield lambda: [json.loads(line) for line in path.read_text().splitlines()]
    sdk._stop.clear()


def test_the_callback_reports_params_metrics_and_a_checkpoint_and_honours_a_stop(tmp_path, events):
    # The Trainer's TrainingArguments (its attributes; building one needs accelerate).
    args = SimpleNamespace(output_dir=str(tmp_path / "ckpt"), learning_rate=3e-4, max_steps=10,
                           seed=42, per_device_train_batch_size=8)  # fmt: skip
    state, control = TrainerState(max_steps=10, global_step=0), TrainerControl()
    callback = ControlPlaneCallback()
    callback.on_train_begin(args, state, control)
    state.global_step = 5
    callback.on_log(args, state, control, logs={"loss": 1.5, "learning_rate": 2e-4, "epoch": 0.5})
    callback.on_log(args, state, control, logs={"eval_loss": 1.7, "eval_runtime": 0.1})
    (tmp_path / "ckpt" / "checkpoint-5").mkdir(parents=True)
    callback.on_save(args, state, control)
    assert not callback.on_step_end(args, state, control).should_training_stop
    sdk.request_stop()  # what SIGTERM does once the callback hooked it
    stopped = callback.on_step_end(args, state, control)
    assert stopped.should_training_stop and stopped.should_save
    params, train, evals, checkpoint = events()
    assert params["kind"] == "params" and params["total"] == 10
    assert params["values"]["learning_rate"] == 3e-4 and params["values"]["max_steps"] == 10
    assert (train["kind"], train["step"], train["values"]["loss"]) == ("train", 5, 1.5)
    assert evals["kind"] == "eval" and evals["values"] == {"loss": 1.7, "runtime": 0.1}
    assert checkpoint["type"] == "checkpoint" and checkpoint["path"].endswith("checkpoint-5")


def test_other_ranks_report_nothing(tmp_path, events):
    args = SimpleNamespace(output_dir=str(tmp_path))
    state = TrainerState(max_steps=3, is_world_process_zero=False)
    ControlPlaneCallback().on_log(args, state, TrainerControl(), logs={"loss": 1.0})
    assert not (tmp_path / "events.jsonl").exists()
