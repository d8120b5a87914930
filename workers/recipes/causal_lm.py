"""Built-in training recipe: a Llama-style causal language model from text.

    python -m workers.recipes.causal_lm --preset tiny --output-dir runs/tiny
    torchrun --nproc_per_node 2 -m workers.recipes.causal_lm --strategy fsdp ...

Runs alone, under ``torchrun`` (DDP or FSDP2, gloo on CPU, NCCL on GPU) and as a control
plane job, where it reports through :mod:`workers.sdk` (metrics, checkpoints, preemption
by SIGTERM). ``--help`` lists every flag. See docs/training.md.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from workers import sdk

from . import checkpoint as ckpt
from .config import RecipeConfig, parse_config, resolve_batch
from .data import DataError, PreparedData, prepare_data
from .distributed import (
    DistContext,
    autocast,
    grad_sync,
    init_distributed,
    replica_digests,
    shutdown,
    wrap_model,
)
from .loader import eval_loader, train_loader
from .metrics import Throughput, flops_per_token, peak_memory_bytes, peak_tflops

log = logging.getLogger("workers.recipes.causal_lm")


class RecipeError(Exception):
    """A user-facing problem (bad resume target, impossible batch): a message, exit 2."""


def build_model(cfg: RecipeConfig, vocab: int, eos_id: int) -> nn.Module:
    """A transformers LlamaForCausalLM with SDPA attention, vocab padded to 64."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=(vocab + 63) // 64 * 64,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        use_cache=False,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(config)
    model.config.use_cache = True  # for whoever loads the export; training passes False
    return model


def lr_schedule(cfg: RecipeConfig) -> Any:
    """Linear warmup to 1, then cosine down to ``min_lr_ratio`` at ``max_steps``."""
    warm, total, floor = cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_optimizer(model: nn.Module, cfg: RecipeConfig, device: torch.device) -> Any:
    """AdamW; no weight decay on norms and biases (1-D parameters)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs: dict[str, Any] = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **kwargs)


def make_scaler(cfg: RecipeConfig, device: torch.device) -> Any:
    enabled = cfg.precision == "fp16"
    if cfg.strategy == "fsdp" and enabled:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device.type, enabled=True)
    return torch.amp.GradScaler(device.type, enabled=enabled)


def evaluate(model: nn.Module, loader: Any, cfg: RecipeConfig, ctx: DistContext) -> float:
    """Mean held-out token loss over every rank's share."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    with torch.no_grad(), autocast(cfg, ctx.device):
        for batch in loader:
            batch = batch.to(ctx.device, non_blocking=True)
            x, y = batch[:, :-1], batch[:, 1:]
            logits = model(input_ids=x, use_cache=False).logits
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum"
            )
            total[0] += loss.double()
            total[1] += y.numel()
    if ctx.distributed:
        dist.all_reduce(total)
    model.train()
    return float(total[0] / total[1])


def resolve_resume(cfg: RecipeConfig, root: Path) -> Path | None:
    managed = sdk.resume_from()
    if managed is not None:
        if ckpt.read_state(managed) is None:
            raise RecipeError(f"CP_RESUME_FROM={managed} is not a complete checkpoint")
        return managed
    if cfg.resume == "auto":
        found = ckpt.latest_checkpoint(root)
        if found is None:
            log.info("--resume auto: no complete checkpoint in %s, starting fresh", root)
        return found
    if cfg.resume:
        path = Path(cfg.resume)
        if ckpt.read_state(path) is None:
            raise RecipeError(f"--resume {path}: not a complete checkpoint of this recipe")
        return path
    return None


def _setup_logging(rank: int) -> None:
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
        force=True,
    )
    for noisy in ("httpx", "transformers", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(cfg: RecipeConfig, ctx: DistContext) -> int:
    """The whole training run on one rank; returns the process exit code."""
    from transformers import LlamaConfig

    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    try:
        mb, accum = resolve_batch(cfg, ctx.world)
    except ValueError as exc:
        raise RecipeError(str(exc)) from None
    ckpt_root = sdk.checkpoint_dir() or Path(cfg.output_dir) / "checkpoints"
    output_dir = Path(cfg.output_dir)
    resume_path = resolve_resume(cfg, ckpt_root)

    data: PreparedData = prepare_data(
        cfg.data, cfg.text_field, cfg.tokenizer, cfg.vocab_size, cfg.cache_dir,
        cfg.seq_len, cfg.eval_fraction, builder=ctx.local_rank == 0, all_ok=ctx.all_ok,
    )  # fmt: skip
    windows = data.windows
    if windows.n_eval < ctx.world:
        raise DataError(f"only {windows.n_eval} held-out sequences for {ctx.world} ranks")

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg, data.tokenizer.vocab_size, data.tokenizer.eos_id)
    hf_config: LlamaConfig = model.config
    vocab = hf_config.vocab_size
    n_params = sum(p.numel() for p in model.parameters())
    n_embed = model.model.embed_tokens.weight.numel()
    n_non_embed = n_params - n_embed * (1 if cfg.tie_embeddings else 2)  # minus lm_head
    model.to(ctx.device)
    model = wrap_model(model, cfg, ctx)
    model.train()
    optimizer = make_optimizer(model, cfg, ctx.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(cfg))
    scaler = make_scaler(cfg, ctx.device)
    torch.manual_seed(cfg.seed + 1 + ctx.rank)  # per-rank streams (dropout, sampling)

    step, samples = 0, 0
    if resume_path is not None:
        saved = ckpt.read_state(resume_path) or {}
        if saved.get("model_shape") != cfg.model_shape() or saved.get("vocab") != vocab:
            raise RecipeError(
                f"{resume_path} holds a model of another shape ({saved.get('model_shape')}, "
                f"vocab {saved.get('vocab')}) than these flags ({cfg.model_shape()}, "
                f"vocab {vocab})"
            )
        state = ckpt.load_checkpoint(resume_path, ctx, model, optimizer)
        if state["data"]["hash"] != data.data_hash:
            log.warning("resuming on different data than the checkpoint was trained on")
        if state["config"]["max_steps"] != cfg.max_steps:
            log.warning("--max-steps changed since the checkpoint: the LR schedule differs")
        scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None]})
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, samples = int(state["step"]), int(state["samples_consumed"])
        log.info("resumed from %s (step %d, sample %d)", resume_path, step, samples)

    g_samples = mb * accum * ctx.world
    tokens_per_step = g_samples * cfg.seq_len
    flops = flops_per_token(n_non_embed, cfg.layers, cfg.hidden, cfg.seq_len) * tokens_per_step
    peak = peak_tflops(ctx.device, cfg.precision, cfg.peak_tflops)
    workers = cfg.num_workers
    if workers is None:
        # On CPU the memmap slice is cheaper than a worker's IPC per batch (measured).
        workers = 2 if ctx.device.type == "cuda" else 0
    loader = train_loader(
        data, cfg.seed, samples, ctx.rank, ctx.world, mb, accum, workers,
        pin_memory=ctx.device.type == "cuda",
    )  # fmt: skip
    evals = eval_loader(data, ctx.rank, ctx.world, mb, cfg.eval_batches)
    log.info(
        "model: %s parameters (%s non-embedding), vocab %d | world %d x micro-batch %d x "
        "accum %d = %d sequences of %d tokens per step | %s %s on %s",
        f"{n_params:,}", f"{n_non_embed:,}", vocab, ctx.world, mb, accum, g_samples,
        cfg.seq_len, cfg.precision, cfg.strategy, ctx.device,
    )  # fmt: skip
    sdk.report_metrics(
        step,
        {"parameters": n_params, "world_size": ctx.world, "tokens_per_step": tokens_per_step,
         "resumed_from_step": step, "train_sequences": windows.n_train,
         "eval_sequences": windows.n_eval},
        kind="system",
    )  # fmt: skip

    last: dict[str, float] = {}
    saved_step = step if resume_path is not None else -1

    def save(reason: str, **extra: Any) -> Path:
        nonlocal saved_step
        state = {
            **extra,
            "reason": reason,
            "samples_consumed": samples,
            "tokens_consumed": samples * cfg.seq_len,
            "micro_batch": mb,
            "grad_accum": accum,
            "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
            "scaler": scaler.state_dict(),
            "config": cfg.to_json(),
            "model_shape": cfg.model_shape(),
            "vocab": vocab,
            "parameters": n_params,
            "data": {
                "hash": data.data_hash,
                "tokenizer_sha256": data.tokenizer.sha256,
                "files": [str(f) for f in data.files[:100]],
            },
            "metrics": dict(last),
        }
        from .export import write_hf_files

        path = ckpt.save_checkpoint(
            ckpt_root, step, ctx, model, optimizer, state, cfg.tie_embeddings,
            lambda d: write_hf_files(d, hf_config, data.tokenizer),
        )  # fmt: skip
        if ctx.is_main:
            ckpt.prune(ckpt_root, cfg.keep_checkpoints)
            sdk.report_checkpoint(path, step, dict(last))
            log.info("checkpoint %s (%s)", path, reason)
        saved_step = step
        return path

    def run_eval() -> None:
        loss = evaluate(model, evals, cfg, ctx)
        last.update(eval_loss=loss, eval_perplexity=math.exp(min(loss, 50.0)))
        sdk.report_metrics(step, {"eval_loss": loss, "perplexity": last["eval_perplexity"]}, "eval")
        log.info("step %d | eval loss %.4f | perplexity %.2f", step, loss, last["eval_perplexity"])

    batches = iter(loader)
    meter = Throughput(tokens_per_step, g_samples, flops)
    preempted = False
    loss_acc = torch.zeros((), device=ctx.device)
    while step < cfg.max_steps:
        if ctx.any_flag(sdk.stop_requested()):
            preempted = True
            break
        for micro in range(accum):
            batch = next(batches).to(ctx.device, non_blocking=True)
            x, y = batch[:, :-1], batch[:, 1:]
            with grad_sync(model, cfg, micro == accum - 1):
                with autocast(cfg, ctx.device):
                    logits = model(input_ids=x, use_cache=False).logits
                loss = F.cross_entropy(logits.float().reshape(-1, vocab), y.reshape(-1))
                scaler.scale(loss / accum).backward()
            loss_acc += loss.detach()
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step += 1
        samples += g_samples
        meter.tick()

        if step % cfg.log_every == 0 or step == cfg.max_steps:
            loss_t = loss_acc / (accum * meter.steps)
            if ctx.distributed:
                dist.all_reduce(loss_t)
                loss_t /= ctx.world
            values = {"loss": loss_t.item(), "lr": scheduler.get_last_lr()[0]}
            if cfg.grad_clip > 0:
                gn = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
                values["grad_norm"] = float(gn)
            if cfg.precision == "fp16":
                values["loss_scale"] = float(scaler.get_scale())
            values.update(meter.read(ctx.world, peak))
            values["peak_memory_mb"] = peak_memory_bytes(ctx.device) / 2**20
            values["epoch"] = samples / windows.n_train
            last.update(loss=values["loss"])
            sdk.report_metrics(step, values, "train", total=cfg.max_steps)
            log.info(
                "step %d/%d | loss %.4f | lr %.2e | %.0f tok/s | %.3f s/step | %.0f MB%s",
                step, cfg.max_steps, values["loss"], values["lr"], values["tokens_per_s"],
                values["step_time_s"], values["peak_memory_mb"],
                f" | MFU {values['mfu']:.1%}" if "mfu" in values else "",
            )  # fmt: skip
            loss_acc.zero_()
            meter.reset()
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
            run_eval()
            meter.reset()
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
            save("periodic")
            meter.reset()

    if preempted:
        log.warning("stop requested at step %d: checkpointing and exiting", step)
        if saved_step != step:
            save("preempted")
        return 0
    run_eval()
    extra: dict[str, Any] = {}
    if cfg.strategy == "ddp":  # replicas must be bit-identical after training
        digests = replica_digests(model, ctx)
        extra["replica_sha256"] = digests
        if len(set(digests)) != 1:
            log.error("DDP replicas diverged: %s", digests)
        sdk.report_metrics(step, {"replicas_in_sync": float(len(set(digests)) == 1)}, "system")
    if saved_step != step or extra:
        save("final", **extra)
    if cfg.export:
        final_sd = ckpt.gather_model(model, cfg.tie_embeddings)
        if ctx.is_main:
            from .export import export_final

            card = {
                "name": output_dir.resolve().name,
                "parameters": n_params,
                "shape": f"{cfg.layers} layers, hidden {cfg.hidden}, {cfg.heads} heads "
                f"({cfg.kv_heads} kv), seq {cfg.seq_len}",
                "steps": step,
                "tokens": samples * cfg.seq_len,
                "precision": cfg.precision,
                "strategy": cfg.strategy,
                "world_size": ctx.world,
                "data_files": [f.name for f in data.files],
                "data_hash": data.data_hash,
                "vocab": data.tokenizer.vocab_size,
                **last,
            }
            path = export_final(output_dir / "final", final_sd, hf_config, data.tokenizer, card)
            log.info("exported %s", path)
            if cfg.register:  # the control plane registers it when the job succeeds
                sdk.report_model(path, {k: v for k, v in last.items() if k.startswith("eval")})
        ctx.barrier()
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    rank = int(os.environ.get("RANK", "0"))
    _setup_logging(rank)
    sdk.install_signal_handlers()
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    started = time.time()
    try:
        ctx = init_distributed(cfg)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        code = run(cfg, ctx)
        ctx.barrier()  # leave together: tearing gloo down while a peer still talks aborts
    except (DataError, RecipeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown(ctx)
    log.info("done in %.1f s", time.time() - started)
    return code


if __name__ == "__main__":
    sys.exit(main())
