"""Shared parts of the recipe benchmarks: run the recipe or a hand-written loop in a
subprocess and read back steady-state throughput and peak memory.

Also runnable on its own as the baseline worker:

    python bench/recipe_common.py baseline --steps 40 --warmup 10 -- <recipe flags>

which builds the same model (same flags, same tokenizer vocabulary) and trains it with the
shortest loop that does the same math (forward, loss, backward, clip, AdamW step) on
random tokens already in memory, then prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CP_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.update(extra)
    return env


def recipe_argv(args: list[str], nproc: int = 0) -> list[str]:
    if nproc == 0:
        return [sys.executable, "-m", "workers.recipes.causal_lm", *args]
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        "-m", "workers.recipes.causal_lm", *args,
    ]  # fmt: skip


def steady_state(train_events: list[dict[str, Any]], warmup: int) -> dict[str, float]:
    """Throughput over the logging intervals that start after ``warmup`` steps."""
    tokens = seconds = 0.0
    prev = 0
    mfu: list[float] = []
    peak = 0.0
    for e in sorted(train_events, key=lambda e: e["step"]):
        v, steps = e["values"], e["step"] - prev
        peak = max(peak, v.get("peak_memory_mb") or 0.0)
        if prev >= warmup:
            dt = v["step_time_s"] * steps
            tokens += v["tokens_per_s"] * dt
            seconds += dt
            if v.get("mfu") is not None:
                mfu.append(v["mfu"])
        prev = e["step"]
    if seconds == 0:
        raise RuntimeError("no logging interval after the warm-up steps")
    out = {"tokens_per_s": tokens / seconds, "peak_memory_mb": peak}
    if mfu:
        out["mfu"] = sum(mfu) / len(mfu)
    return out


def run_recipe(
    args: list[str], warmup: int, nproc: int = 0, timeout: float = 1800, **env: str
) -> dict[str, float]:
    """Run the recipe; return its steady-state tokens/s, peak memory (MB) and MFU."""
    with tempfile.TemporaryDirectory(prefix="recipe-bench-") as tmp:
        ev = Path(tmp) / "events.jsonl"
        argv = recipe_argv(
            [*args, "--output-dir", str(Path(tmp) / "out"), "--eval-every", "0",
             "--checkpoint-every", "0", "--no-export"],
            nproc,
        )  # fmt: skip
        proc = subprocess.run(
            argv, cwd=REPO, env=bench_env(CP_EVENTS_FILE=str(ev), **env),
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"recipe failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        evs = [json.loads(line) for line in ev.read_text().splitlines()]
    train = [e for e in evs if e["type"] == "metrics" and e["kind"] == "train"]
    system = next(e for e in evs if e["type"] == "metrics" and e["kind"] == "system")
    out = steady_state(train, warmup)
    out["step_time_s"] = system["values"]["tokens_per_step"] / out["tokens_per_s"]
    out["parameters"] = system["values"]["parameters"]
    return out


def run_baseline(
    args: list[str], steps: int, warmup: int, timeout: float = 1800, **env: str
) -> dict[str, float]:
    """Run the hand-written loop (this file's ``baseline`` command) in a subprocess."""
    argv = [sys.executable, str(Path(__file__).resolve()), "baseline", "--steps", str(steps),
            "--warmup", str(warmup), "--", *args]  # fmt: skip
    proc = subprocess.run(
        argv, cwd=REPO, env=bench_env(**env), capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"baseline failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def machine_line() -> str:
    load = os.getloadavg()
    return (
        f"{time.strftime('%Y-%m-%d %H:%M')} | {os.cpu_count()} CPUs | load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


# ---------------------------------------------------------------------- baseline worker


def baseline_main(steps: int, warmup: int, recipe_args: list[str]) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from workers.recipes.causal_lm import build_model
    from workers.recipes.config import parse_config
    from workers.recipes.data import prepare_data
    from workers.recipes.loader import TrainStream

    cfg = parse_config(recipe_args)
    data = prepare_data(
        cfg.data, cfg.text_field, cfg.tokenizer, cfg.vocab_size, cfg.cache_dir,
        cfg.seq_len, cfg.eval_fraction, builder=True, all_ok=lambda ok: ok,
    )  # fmt: skip
    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.tokenizer.vocab_size, data.tokenizer.eos_id).to(device)
    model.train()
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.compile:
        for layer in model.model.layers:
            layer.compile()
    vocab = model.config.vocab_size
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
        weight_decay=cfg.weight_decay, **({"fused": True} if cuda else {"foreach": True}),
    )  # fmt: skip
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    mb, accum = cfg.micro_batch, cfg.grad_accum or 1
    # The same token windows the recipe reads first, preloaded: no loader in this loop.
    stream = TrainStream(data.windows, cfg.seed)
    n = min(steps * accum, 64)
    batches = torch.stack([stream[i] for i in range(n * mb)]).view(n, mb, -1).to(device)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    start = 0.0
    for step in range(steps):
        if step == warmup:
            sync()
            start = time.perf_counter()
        for m in range(accum):
            b = batches[(step * accum + m) % len(batches)]
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(input_ids=b[:, :-1], use_cache=False).logits
            loss = F.cross_entropy(logits.float().reshape(-1, vocab), b[:, 1:].reshape(-1))
            scaler.scale(loss / accum).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        loss.item()  # like any loop that looks at its loss
    sync()
    elapsed = time.perf_counter() - start
    tokens = (steps - warmup) * mb * accum * cfg.seq_len
    from workers.recipes.metrics import flops_per_token, peak_memory_bytes, peak_tflops

    n_params = sum(p.numel() for p in model.parameters())
    n_embed = model.model.embed_tokens.weight.numel()
    non_embed = n_params - n_embed * (1 if cfg.tie_embeddings else 2)
    out = {
        "tokens_per_s": tokens / elapsed,
        "step_time_s": elapsed / (steps - warmup),
        "peak_memory_mb": peak_memory_bytes(device) / 2**20,
        "parameters": float(n_params),
    }
    peak = peak_tflops(device, cfg.precision, cfg.peak_tflops)
    if peak:
        fpt = flops_per_token(non_embed, cfg.layers, cfg.hidden, cfg.seq_len)
        out["mfu"] = fpt * out["tokens_per_s"] / (peak * 1e12)
    return out


if __name__ == "__main__":
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["baseline"])
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    ns = parser.parse_args(argv[:cut])
    print(json.dumps(baseline_main(ns.steps, ns.warmup, argv[cut + 1 :])))
