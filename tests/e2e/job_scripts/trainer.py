"""A checkpointing "trainer" written against the job SDK: one step every STEP_SECONDS; a
checkpoint (sdk.save_checkpoint: safetensors, atomic) after every step; resumes from
sdk.latest_checkpoint(); on SIGTERM it checkpoints and exits 0. Under torchrun with
several ranks, the ranks agree each step on whether to stop.
"""

import os
import sys
import time

import torch
from safetensors.torch import load_file

from workers import sdk

STEPS = int(os.environ.get("STEPS", "20"))
STEP_SECONDS = float(os.environ.get("STEP_SECONDS", "0.3"))


def main() -> int:
    sdk.install_signal_handlers()
    try:
        return train()
    finally:
        # Leave together and tear gloo down: a process that exits with gloo's threads
        # still running can abort ("terminate called without an active exception").
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def train() -> int:
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    rank = int(os.environ.get("RANK", "0"))
    start = 1
    resume = sdk.latest_checkpoint()
    if resume is not None:
        state = load_file(str(resume / "model.safetensors"))
        start = int(state["step"].item()) + 1
        print(f"resumed from {resume.name}: continuing at step {start}", flush=True)
    else:
        print("starting from scratch", flush=True)
    if rank == 0:
        sdk.report_metrics(start, {"first_step": float(start)})
    for step in range(start, STEPS + 1):
        time.sleep(STEP_SECONDS)
        stop = torch.tensor([1.0 if sdk.stop_requested() else 0.0])
        if distributed:
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        if rank == 0:
            sdk.save_checkpoint({"step": torch.tensor([step])}, step)
            sdk.report(step, total=STEPS, loss=1.0 / step)
        print(f"step {step}", flush=True)
        if stop.item():
            print(f"stop requested: checkpointed step {step}, exiting", flush=True)
            return 0
    print("finished all steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
