"""Atomic, complete, pickle-free checkpoints for the recipe.

A checkpoint is a directory ``step_XXXXXXXX`` that is also a Hugging Face model directory:

- ``config.json``, ``generation_config.json``, ``model.safetensors`` (fp32 weights,
  transformers' key names; a tied ``lm_head.weight`` is left out as transformers does),
  tokenizer files: ``AutoModelForCausalLM.from_pretrained(path)`` loads it as it is;
- ``optimizer.safetensors``: the optimizer state, keyed ``<parameter name>/<field>``;
- ``rng/rank_XXXXX.safetensors``: every rank's torch (CPU and CUDA), numpy and Python
  random generator states, as tensors;
- ``trainer_state.json``: step, data position (samples consumed), the LR scheduler's and
  grad scaler's state, optimizer hyper-parameters, the run's config; written last.

Writing goes to ``.tmp-step_XXXXXXXX``; each file is fsynced, then the directory is
renamed into place (and the parent fsynced). Only a ``step_*`` directory whose
``trainer_state.json`` says ``complete`` counts, so a crash mid-write leaves the previous
checkpoint as the latest and the stale temp directory is swept at the next save.
Nothing is pickled: tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from .distributed import DistContext

FORMAT = "cp-causal-lm-checkpoint"
VERSION = 1
STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.safetensors"
TIED_KEY = "lm_head.weight"
EMBED_KEY = "model.embed_tokens.weight"
_NAME = re.compile(r"^step_(\d{8,})$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def read_state(path: Path) -> dict[str, Any] | None:
    """The trainer state of a complete checkpoint directory, else None."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if state.get("format") != FORMAT or not state.get("complete"):
        return None
    if not (path / MODEL_FILE).is_file():
        return None
    return state


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _NAME.match(child.name)
        if match and child.is_dir() and read_state(child) is not None:
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def prune(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints and stale temp dirs."""
    removed = []
    for _, path in list_checkpoints(root)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    for child in root.iterdir() if root.is_dir() else []:
        if child.name.startswith((".tmp-step_", ".old-step_")):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


# ------------------------------------------------------------------------------- files


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n")
    _fsync(path)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
        str(path),
        metadata={"format": "pt"},
    )
    _fsync(path)


# --------------------------------------------------------------------------------- rng


def rng_tensors(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random generator states, as tensors."""
    out = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["torch_cuda"] = torch.cuda.get_rng_state(device)
    name, keys, pos, has_gauss, cached = np.random.get_state()
    assert name == "MT19937"
    out["numpy_keys"] = torch.from_numpy(keys.astype(np.int64))
    out["numpy_pos_gauss"] = torch.tensor([pos, has_gauss], dtype=torch.int64)
    out["numpy_cached_gaussian"] = torch.tensor([cached], dtype=torch.float64)
    version, internal, gauss_next = random.getstate()
    out["python_state"] = torch.tensor([version, *internal], dtype=torch.int64)
    gauss = float("nan") if gauss_next is None else gauss_next
    out["python_gauss_next"] = torch.tensor([gauss], dtype=torch.float64)
    return out


def set_rng_tensors(t: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(t["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in t:
        torch.cuda.set_rng_state(t["torch_cuda"], device)
    pos, has_gauss = (int(x) for x in t["numpy_pos_gauss"].tolist())
    cached = float(t["numpy_cached_gaussian"].item())
    np.random.set_state(
        ("MT19937", t["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached)
    )
    values = [int(x) for x in t["python_state"].tolist()]
    gauss = float(t["python_gauss_next"].item())
    random.setstate((values[0], tuple(values[1:]), None if gauss != gauss else gauss))


# ------------------------------------------------------------------------ save / load


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def gather_model(model: nn.Module, tied: bool) -> dict[str, torch.Tensor]:
    """The full model state dict on rank 0 (empty elsewhere); a collective under FSDP."""
    sd = get_model_state_dict(model, options=_FULL)
    if tied:
        sd.pop(TIED_KEY, None)
    return sd


def save_checkpoint(
    root: Path,
    step: int,
    ctx: DistContext,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    tied: bool,
    write_hf_files: Callable[[Path], None],
) -> Path:
    """Write a complete checkpoint for ``step`` atomically; every rank must call this.

    ``state`` is the JSON part (step, data position, scheduler, scaler, ...). Returns
    the final directory.
    """
    name = checkpoint_name(step)
    tmp, final = root / f".tmp-{name}", root / name
    if ctx.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "rng").mkdir(parents=True)
    ctx.barrier()
    model_sd = gather_model(model, tied)
    optim_sd = get_optimizer_state_dict(model, optimizer, options=_FULL)
    write_tensors(tmp / "rng" / f"rank_{ctx.rank:05d}.safetensors", rng_tensors(ctx.device))
    if ctx.is_main:
        write_tensors(tmp / MODEL_FILE, model_sd)
        flat = {
            f"{fqn}/{field}": value
            for fqn, fields in optim_sd["state"].items()
            for field, value in fields.items()
            if isinstance(value, torch.Tensor)
        }
        write_tensors(tmp / OPTIM_FILE, flat)
        write_hf_files(tmp)
        groups = [
            {k: list(v) if isinstance(v, tuple) else v for k, v in g.items()}
            for g in optim_sd["param_groups"]
        ]
        full_state = {
            "format": FORMAT,
            "version": VERSION,
            "complete": True,
            "time": time.time(),
            "step": step,
            "world_size": ctx.world,
            "tied_embeddings": tied,
            "optimizer_param_groups": groups,
            **state,
        }
        write_json(tmp / STATE_FILE, full_state)
    del model_sd, optim_sd
    ctx.barrier()  # every rank's files are on disk
    if ctx.is_main:
        _fsync(tmp / "rng")
        _fsync(tmp)
        aside = root / f".old-{name}"
        if final.exists():  # the same step written again (e.g. a rerun): swap it out
            os.rename(final, aside)
        os.rename(tmp, final)
        _fsync(root)
        shutil.rmtree(aside, ignore_errors=True)
    ctx.barrier()
    return final


def load_checkpoint(
    path: Path, ctx: DistContext, model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Load model, optimizer and this rank's RNG state; returns the JSON state."""
    state = read_state(path)
    if state is None:
        raise ValueError(f"{path} is not a complete checkpoint of this recipe")
    model_sd = load_file(str(path / MODEL_FILE))
    if state.get("tied_embeddings") and TIED_KEY not in model_sd:
        model_sd[TIED_KEY] = model_sd[EMBED_KEY]
    set_model_state_dict(model, model_sd, options=StateDictOptions(full_state_dict=True))
    flat = load_file(str(path / OPTIM_FILE))
    nested: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        fqn, field = key.rsplit("/", 1)
        nested.setdefault(fqn, {})[field] = value
    groups = []
    for g in state["optimizer_param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    if nested:
        set_optimizer_state_dict(
            model,
            optimizer,
            {"state": nested, "param_groups": groups},
            options=StateDictOptions(full_state_dict=True),
        )
    rng_file = path / "rng" / f"rank_{ctx.rank:05d}.safetensors"
    if rng_file.is_file() and state.get("world_size") == ctx.world:
        set_rng_tensors(load_file(str(rng_file)), ctx.device)
    else:
        seed = int(state.get("config", {}).get("seed", 0)) + 7919 * ctx.rank + int(state["step"])
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
    return state
