"""The job SDK for PyTorch Lightning, for users willing to add a line::

    from workers.sdk_lightning import ControlPlaneCallback, ControlPlaneLogger
    trainer = L.Trainer(..., logger=ControlPlaneLogger(), callbacks=[ControlPlaneCallback()])

Without them, the launcher already reads a ``TensorBoardLogger``'s event files. The logger
reports what ``self.log(...)`` logs as the job's metrics as it is logged (names kept;
``val_*``/``val/*`` under ``eval/``) and the hyperparameters (``save_hyperparameters()``)
as ``params/*``. The callback adds progress against the planned steps from the first one
and turns a stop asked by the control plane (cancel, preemption, drain) into Lightning's
own graceful stop (``trainer.should_stop``) instead of a kill. Outside the control plane
every call is a no-op. ``lightning`` is not a dependency of the control plane: install it
in the job's environment.
"""

from __future__ import annotations

import os
from argparse import Namespace
from typing import Any

from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from workers import sdk


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    found = {}
    for name, value in values.items():
        if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
            value = value.item()  # a 0-d tensor, as self.log() keeps them
        if isinstance(value, int | float) and not isinstance(value, bool):
            found[str(name)] = float(value)
    return found


EVAL_PREFIXES = ("val/", "val_", "validation_", "valid_")


def _eval_name(name: str) -> str | None:
    """``val_loss`` -> ``loss`` (reported as eval/loss); None for a training metric."""
    for prefix in EVAL_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return None


class ControlPlaneLogger(Logger):
    """Lightning's metrics and hyperparameters as the job's metrics."""

    def __init__(self) -> None:
        super().__init__()
        self.total: int | None = None  # planned steps (set by ControlPlaneCallback)

    @property
    def name(self) -> str:
        return "controlplane"

    @property
    def version(self) -> str:
        return os.environ.get("CP_JOB_ID", "local")

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(params, Namespace):
            params = vars(params)
        values = _numbers(dict(params or {}))
        if values:
            sdk.report_metrics(0, values, "params", total=self.total)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        values = _numbers({k: v for k, v in metrics.items() if k != "epoch"})
        step = int(step or 0)
        train = {k: v for k, v in values.items() if _eval_name(k) is None}
        evals = {_eval_name(k): v for k, v in values.items() if _eval_name(k) is not None}
        if train:
            sdk.report_metrics(step, train, "train", total=self.total)
        if evals:
            sdk.report_metrics(step, evals, "eval", total=self.total)


class ControlPlaneCallback(Callback):
    """Progress against the planned steps, and the control plane's stop as a clean stop."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        if total is None:
            estimated = trainer.estimated_stepping_batches
            total = int(estimated) if estimated != float("inf") else None
        for logger in trainer.loggers:
            if isinstance(logger, ControlPlaneLogger):
                logger.total = total
        sdk.should_stop()  # from here on SIGTERM asks to stop, it does not kill

    def on_train_batch_end(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        if sdk.stop_requested():
            trainer.should_stop = True
