"""A plain torchrun DDP script (gloo) that prints its own training speed: steps/s over the
loop, after a warm-up, so start-up time does not count."""

import os
import time

import torch
import torch.distributed as dist
from torch import nn

STEPS = int(os.environ.get("BENCH_STEPS", "300"))
WARMUP = 20


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(rank)
    torch.set_num_threads(1)
    model = nn.parallel.DistributedDataParallel(
        nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256))
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(64, 256)
    for step in range(STEPS + WARMUP):
        if step == WARMUP:
            dist.barrier()
            start = time.perf_counter()
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    dist.barrier()
    elapsed = time.perf_counter() - start
    if rank == 0:
        print(f"steps/s {STEPS / elapsed:.2f} world {world}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
