"""The Lightning logger and callback of the job SDK, under a real ``Trainer.fit`` on CPU:
what a LightningModule logs becomes the events the launcher reads (train metrics,
``val_*`` as eval, hyperparameters, progress against max_steps), and a stop asked by the
control plane ends training cleanly at the next batch."""

from __future__ import annotations

import json

import pytest
import torch

from workers import sdk

L = pytest.importorskip("lightning")  # a dev requirement: the suite always has it

from workers.sdk_lightning import ControlPlaneCallback, ControlPlaneLogger  # noqa: E402


class Regression(L.LightningModule):
    """What a user writes: y = 2x + 1 with a linear layer."""

    def __init__(self, lr: float = 0.1, hidden: int = 1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(1, hidden)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def loader():
    x = torch.linspace(-1, 1, 64).unsqueeze(1)
    data = torch.utils.data.TensorDataset(x, 2 * x + 1)
    return torch.utils.data.DataLoader(data, batch_size=8)


@pytest.fixture
def events(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv("CP_EVENTS_FILE", str(path))
    monkeypatch.setenv("RANK", "0")
    yield lambda: [json.loads(line) for line in path.read_text().splitlines()]
    sdk._stop.clear()


def fit(tmp_path, max_steps: int, **kwargs) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=max_steps, logger=ControlPlaneLogger(), callbacks=[ControlPlaneCallback()],
        accelerator="cpu", devices=1, log_every_n_steps=1, val_check_interval=3,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(tmp_path), **kwargs,
    )  # fmt: skip
    trainer.fit(Regression(lr=0.2), loader(), loader())
    return trainer


def test_what_a_module_logs_becomes_the_jobs_metrics_with_progress(tmp_path, events):
    fit(tmp_path, max_steps=6)
    found = events()
    params = [e for e in found if e.get("kind") == "params"]
    assert params and params[0]["values"] == {"lr": 0.2, "hidden": 1.0}
    train = [e for e in found if e.get("kind") == "train"]
    assert [e["step"] for e in train] == [0, 1, 2, 3, 4, 5]  # Lightning's steps: 0-based
    assert all(e["total"] == 6 and set(e["values"]) == {"train_loss"} for e in train)
    assert train[-1]["values"]["train_loss"] < train[0]["values"]["train_loss"]
    evals = [e for e in found if e.get("kind") == "eval"]
    assert evals and all(set(e["values"]) == {"loss"} for e in evals)


def test_a_stop_asked_by_the_control_plane_ends_training_at_the_next_batch(tmp_path, events):
    sdk.request_stop()  # what SIGTERM does once the callback has hooked it
    trainer = fit(tmp_path, max_steps=50)
    assert trainer.global_step == 1 and trainer.should_stop
