"""A checkpointing "trainer": one step every STEP_SECONDS; a checkpoint (safetensors, written
atomically) after every step; resumes from CP_RESUME_FROM; on SIGTERM it checkpoints and
exits 0. Under torchrun with several ranks, the ranks agree each step on whether to stop.
"""

import os
import sys
import time

import torch
from safetensors.torch import load_file, save_file

from workers import sdk

STEPS = int(os.environ.get("STEPS", "20"))
STEP_SECONDS = float(os.environ.get("STEP_SECONDS", "0.3"))


def main() -> int:
    sdk.install_signal_handlers()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    rank = int(os.environ.get("RANK", "0"))
    start = 1
    resume = sdk.resume_from()
    if resume is not None:
        state = load_file(str(resume / "state.safetensors"))
        start = int(state["step"].item()) + 1
        print(f"resumed from {resume.name}: continuing at step {start}", flush=True)
    else:
        print("starting from scratch", flush=True)
    if rank == 0:
        sdk.report_metrics(start, {"first_step": float(start)})
    root = sdk.checkpoint_dir()
    for step in range(start, STEPS + 1):
        time.sleep(STEP_SECONDS)
        stop = torch.tensor([1.0 if sdk.stop_requested() else 0.0])
        if distributed:
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        if rank == 0:
            final = root / f"step-{step}"
            tmp = root / f".tmp-step-{step}"
            tmp.mkdir(parents=True, exist_ok=True)
            save_file({"step": torch.tensor([step])}, str(tmp / "state.safetensors"))
            os.replace(tmp, final)
            sdk.report_checkpoint(final, step)
            sdk.report_metrics(
                step,
                {"loss": 1.0 / step},
            )
        print(f"step {step}", flush=True)
        if stop.item():
            print(f"stop requested: checkpointed step {step}, exiting", flush=True)
            return 0
    print("finished all steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
