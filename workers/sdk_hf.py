"""The job SDK for the Hugging Face Trainer, for users willing to add one line::

    from workers.sdk_hf import ControlPlaneCallback
    trainer = Trainer(..., callbacks=[ControlPlaneCallback()])

Without it, the launcher already reads the Trainer's TensorBoard files and tqdm bar. With
it the job also gets: progress against ``max_steps`` from the first step, its
hyperparameters (``params/*``), eval metrics as ``eval/*``, checkpoints the Trainer saves
under ``CP_CHECKPOINT_DIR`` (``output_dir=$CP_CHECKPOINT_DIR``) registered, so a restarted
or preempted job resumes from them (``resume_from_checkpoint=sdk.resume_from()``), and a
stop asked by the control plane (cancel, preemption, drain) turned into "save, then stop
training" instead of being killed. Outside the control plane every call is a no-op.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from workers import sdk

#: TrainingArguments reported as the run's hyperparameters (params/<name>).
PARAMS = ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
          "num_train_epochs", "max_steps", "weight_decay", "warmup_steps", "seed")  # fmt: skip


def _numbers(logs: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in logs.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


class ControlPlaneCallback(TrainerCallback):
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        params = {name: getattr(args, name) for name in PARAMS if hasattr(args, name)}
        sdk.report_metrics(state.global_step, _numbers(params), "params", total=state.max_steps)
        sdk.should_stop()  # from here on SIGTERM asks to stop, it does not kill

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        values = _numbers(logs)
        evals = {k.removeprefix("eval_"): v for k, v in values.items() if k.startswith("eval_")}
        train = {k: v for k, v in values.items() if not k.startswith("eval_")}
        if train:
            sdk.report_metrics(state.global_step, train, "train", total=state.max_steps)
        if evals:
            sdk.report_metrics(state.global_step, evals, "eval", total=state.max_steps)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if sdk.stop_requested():
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        root = sdk.checkpoint_dir()
        if not state.is_world_process_zero or root is None:
            return
        saved = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if saved.is_dir() and saved.resolve().is_relative_to(root.resolve()):
            sdk.report_checkpoint(saved, state.global_step)
