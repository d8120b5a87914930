"""An ordinary torchrun script (DDP over gloo): nothing in it knows about the control plane,
except that it reports its loss through the SDK when the SDK is importable."""

import os

import torch
import torch.distributed as dist
from torch import nn

try:
    from workers import sdk
except ImportError:  # plain torchrun, elsewhere
    sdk = None


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    hidden = [
        n for n in ("DATABASE_URL", "REDIS_URL", "CP_SECRET_KEY", "SECRET_KEY") if n in os.environ
    ]
    node = os.environ["CP_NODE_RANK"]
    print(f"rank {rank} of {world} on node {node} up; secrets visible: {hidden}", flush=True)
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(64, 8)
    y = x.sum(dim=1, keepdim=True)
    for step in range(1, 31):
        loss = nn.functional.mse_loss(model(x[rank::world]), y[rank::world])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if rank == 0 and sdk is not None:
            sdk.report(step, total=30, loss=loss.item())
    weights = model.module.weight.detach().clone()
    gathered = [torch.zeros_like(weights) for _ in range(world)]
    dist.all_gather(gathered, weights)
    same = all(torch.equal(g, gathered[0]) for g in gathered)
    print(f"rank {rank} done: final loss {loss.item():.4f}, ranks agree: {same}", flush=True)
    dist.barrier()  # leave together: tearing gloo down while a peer still talks aborts
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
