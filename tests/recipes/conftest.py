"""Helpers for the recipe tests: run the recipe as real processes (alone or under torchrun).

Every run uses a small model (the ``tiny`` preset shrunk further where a test only needs
the mechanics) and a tokenizer/token cache shared by the whole session, so the corpus is
tokenized once.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

# The tiny preset, shrunk: 2 layers, hidden 64, 1k vocabulary, 64-token sequences.
SMALL = [
    "--preset", "tiny", "--vocab-size", "1024", "--seq-len", "64", "--micro-batch", "4",
    "--hidden", "64", "--layers", "2", "--intermediate", "128", "--num-workers", "0",
    "--eval-batches", "4", "--warmup-steps", "5", "--log-every", "1",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CP_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))
    }
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["GLOO_SOCKET_IFNAME"] = "lo"
    env["OMP_NUM_THREADS"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.update(extra)
    return env


def recipe_cmd(args: list[str], nproc: int = 0) -> list[str]:
    """argv for the recipe alone (nproc=0) or under torchrun with ``nproc`` processes."""
    if nproc == 0:
        return [sys.executable, "-m", "workers.recipes.causal_lm", *args]
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        "-m", "workers.recipes.causal_lm", *args,
    ]  # fmt: skip


def run_recipe(
    args: list[str], nproc: int = 0, timeout: float = 240, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        recipe_cmd(args, nproc),
        cwd=REPO,
        env=base_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def check(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def train_losses(path: Path) -> dict[int, float]:
    return {
        e["step"]: e["values"]["loss"]
        for e in events(path)
        if e["type"] == "metrics" and e["kind"] == "train"
    }


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("recipe-cache")
