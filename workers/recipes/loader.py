"""Batches for the recipe: the endless, seeded training stream, each rank's slice of it,
and the held-out set.

Sample ``n`` of the stream is window ``perm_e[n mod N]`` of epoch ``e = n div N`` (one
seeded permutation of the N training windows per epoch), so it is the same on every run
and a checkpoint's data position is a single number (samples consumed).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .data import PreparedData, TokenWindows


class TrainStream(Dataset):
    """Sample ``n`` of the endless training stream: a seeded permutation per epoch."""

    def __init__(self, windows: TokenWindows, seed: int) -> None:
        self.windows = windows
        self.seed = seed
        self._epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def order(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = rng.permutation(self.windows.n_train)
            self._epoch = epoch
        return self._perm

    def __len__(self) -> int:
        return self.windows.n_train

    def __getitem__(self, n: int) -> torch.Tensor:
        epoch, pos = divmod(int(n), self.windows.n_train)
        t = int(self.order(epoch)[pos])
        return torch.from_numpy(self.windows.window(self.windows.train_window(t)))


class RankSampler(Sampler[int]):
    """Sample numbers this rank reads, step after step, from ``start`` onwards.

    Step ``s`` covers samples ``[start + s*G, start + (s+1)*G)`` with
    ``G = micro_batch * accum * world``; micro-batch ``m`` of rank ``r`` reads
    ``start + s*G + (m*world + r)*micro_batch + i`` for ``i < micro_batch``.
    """

    def __init__(self, start: int, rank: int, world: int, micro_batch: int, accum: int):
        self.start, self.rank, self.world = start, rank, world
        self.micro_batch, self.accum = micro_batch, accum

    def __iter__(self) -> Iterator[int]:
        mb, world = self.micro_batch, self.world
        g = mb * self.accum * world
        step = 0
        while True:
            base = self.start + step * g
            for m in range(self.accum):
                first = base + (m * world + self.rank) * mb
                yield from range(first, first + mb)
            step += 1


class EvalSet(Dataset):
    def __init__(self, windows: TokenWindows, indices: list[int]) -> None:
        self.windows, self.indices = windows, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        w = self.windows.eval_window(self.indices[i])
        return torch.from_numpy(self.windows.window(w))


def _worker_init(_worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM: a preemption signal sent to the whole process
    group must reach the trainer, which then stops the workers itself."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def train_loader(
    data: PreparedData,
    seed: int,
    start: int,
    rank: int,
    world: int,
    micro_batch: int,
    accum: int,
    num_workers: int,
    pin_memory: bool,
) -> DataLoader:
    """An endless loader of [micro_batch, seq_len + 1] batches from sample ``start`` on."""
    return DataLoader(
        TrainStream(data.windows, seed),
        batch_size=micro_batch,
        sampler=RankSampler(start, rank, world, micro_batch, accum),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        worker_init_fn=_worker_init if num_workers > 0 else None,
    )


def eval_loader(
    data: PreparedData, rank: int, world: int, micro_batch: int, max_batches: int
) -> DataLoader:
    """This rank's share of the held-out windows; every rank gets as many batches."""
    per_rank = min(data.windows.n_eval // world, max_batches * micro_batch)
    indices = list(range(rank * per_rank, (rank + 1) * per_rank))
    return DataLoader(EvalSet(data.windows, indices), batch_size=micro_batch)
