"""Process group, device and model wrapping (DDP or FSDP2) for the recipe.

The recipe reads the torchrun variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...)
like any torch.distributed program. Under torchrun a process group is always created
(NCCL on GPU, gloo on CPU), even for world size 1. A plain ``python -m`` run has no
process group, except that ``--strategy fsdp`` makes a one-process group so FSDP2's
sharded-tensor code paths are the same ones a multi-GPU run takes.

Control messages (the stop flag, "did everyone finish data preparation") go over a
separate gloo group on CPU tensors, so checking them every step never syncs the GPU.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .config import RecipeConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class DistContext:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: no process group
    control: Any = None  # a gloo process group for CPU-side flags

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.control)

    def all_ok(self, ok: bool) -> bool:
        """A barrier that returns True only if every rank passed ``ok=True``."""
        if not self.distributed:
            return ok
        flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.control)
        return bool(flag.item())

    def any_flag(self, flag: bool) -> bool:
        """True on every rank if any rank passed True (used for the stop request)."""
        return not self.all_ok(not flag)


def init_distributed(cfg: RecipeConfig) -> DistContext:
    """Pick the device and create the process group(s) this run needs."""
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    backend = "nccl" if use_cuda else "gloo"
    timeout = datetime.timedelta(minutes=30)
    if launched:
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timeout}
        if use_cuda:
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
    elif cfg.strategy == "fsdp":
        dist.init_process_group(
            backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout
        )
    else:
        return DistContext(rank, world, local_rank, device, None)
    control = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    return DistContext(rank, world, local_rank, device, backend, control)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, cfg: RecipeConfig, ctx: DistContext) -> nn.Module:
    """Activation checkpointing, compile, then DDP or FSDP2 (in that order)."""
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = list(model.model.layers)
    if cfg.compile:
        for layer in layers:
            layer.compile()
    if cfg.strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy()
        if cfg.precision != "fp32":
            mp = MixedPrecisionPolicy(param_dtype=DTYPES[cfg.precision], reduce_dtype=torch.float32)
        for layer in layers:
            fully_shard(layer, mp_policy=mp)
        fully_shard(model, mp_policy=mp)  # embeddings, final norm and (tied) lm_head
        return model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def parameter_digest(model: nn.Module) -> str:
    """sha256 over the parameters (sorted by name) as this process holds them."""
    h = hashlib.sha256()
    for name, param in sorted(unwrap(model).named_parameters()):
        h.update(name.encode())
        h.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def replica_digests(model: nn.Module, ctx: DistContext) -> list[str]:
    """Every rank's :func:`parameter_digest` (DDP replicas must all be equal)."""
    mine = parameter_digest(model)
    if not ctx.distributed:
        return [mine]
    t = torch.tensor(list(bytes.fromhex(mine)), dtype=torch.uint8)
    out = [torch.empty_like(t) for _ in range(ctx.world)]
    dist.all_gather(out, t, group=ctx.control)
    return [bytes(x.tolist()).hex() for x in out]


@contextlib.contextmanager
def grad_sync(model: nn.Module, cfg: RecipeConfig, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on accumulation micro-steps that are not the last."""
    if cfg.strategy == "fsdp":
        model.set_requires_gradient_sync(sync)  # type: ignore[operator]
        yield
    elif not sync and hasattr(model, "no_sync"):
        with model.no_sync():  # type: ignore[operator]
            yield
    else:
        yield


def autocast(cfg: RecipeConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if cfg.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[cfg.precision])
