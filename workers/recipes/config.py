"""Command-line flags, model presets and their validation for the causal LM recipe.

Everything the run needs is parsed into one :class:`RecipeConfig`; inconsistent flags are
rejected here with an argparse error (exit status 2), before torch is even set up.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"


@dataclass(frozen=True)
class Preset:
    """A model shape. ``max_positions`` is the longest sequence the model allows."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    seq_len: int
    max_positions: int
    vocab_size: int  # tokenizer vocabulary to train when none is given
    micro_batch: int
    tie_embeddings: bool = True


PRESETS: dict[str, Preset] = {
    # ~1.9M parameters with the default 8k vocabulary: trains in a minute or two on a CPU.
    "tiny": Preset(4, 128, 4, 2, 384, 256, 1024, 8192, 8),
    # ~15M parameters: a few minutes on one GPU, an hour-ish on a laptop CPU.
    "small": Preset(6, 384, 6, 2, 1024, 512, 2048, 16384, 16),
    # ~125M parameters with a 32k vocabulary (GPT-2 small class, Llama shape).
    "125m": Preset(12, 768, 12, 4, 3072, 1024, 2048, 32768, 16),
}

PRECISIONS = ("fp32", "bf16", "fp16")
STRATEGIES = ("ddp", "fsdp")


@dataclass
class RecipeConfig:
    """The resolved settings of one run (flags + preset + environment)."""

    preset: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    seq_len: int
    max_positions: int
    tie_embeddings: bool
    data: list[str]
    tokenizer: str | None
    vocab_size: int
    text_field: str
    eval_fraction: float
    cache_dir: str
    num_workers: int | None
    max_steps: int
    micro_batch: int
    grad_accum: int | None
    global_batch_tokens: int | None
    lr: float
    min_lr_ratio: float
    warmup_steps: int
    weight_decay: float
    beta1: float
    beta2: float
    eps: float
    grad_clip: float
    precision: str
    strategy: str
    activation_checkpointing: bool
    compile: bool
    device: str
    eval_every: int
    eval_batches: int
    log_every: int
    checkpoint_every: int
    keep_checkpoints: int
    seed: int
    output_dir: str
    resume: str | None
    deterministic: bool
    export: bool
    register: bool
    peak_tflops: float | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_shape(self) -> dict[str, Any]:
        keys = ("layers", "hidden", "heads", "kv_heads", "intermediate", "max_positions")
        return {k: getattr(self, k) for k in (*keys, "tie_embeddings")}


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def default_cache_dir() -> str:
    env = os.environ.get("CP_DATA_CACHE")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gpu-controlplane", "recipes")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m workers.recipes.causal_lm",
        description=(
            "Train a Llama-style causal language model (transformers LlamaForCausalLM) "
            "from text. Runs alone, under torchrun --nproc_per_node N, or as a control "
            "plane job. Writes checkpoints and a Hugging Face directory (OUTPUT_DIR/final)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    m = p.add_argument_group("model")
    m.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model size")
    m.add_argument("--layers", type=_positive_int, help="decoder layers (overrides preset)")
    m.add_argument("--hidden", type=_positive_int, help="hidden size")
    m.add_argument("--heads", type=_positive_int, help="attention heads")
    m.add_argument("--kv-heads", type=_positive_int, help="key/value heads (GQA)")
    m.add_argument("--intermediate", type=_positive_int, help="MLP intermediate size")
    m.add_argument("--seq-len", type=_positive_int, help="training sequence length")
    m.add_argument("--max-positions", type=_positive_int, help="max_position_embeddings")
    m.add_argument(
        "--untie-embeddings", action="store_true", help="separate input and output embeddings"
    )

    d = p.add_argument_group("data")
    d.add_argument(
        "--data",
        nargs="+",
        default=[str(CORPUS_DIR)],
        help="text files or directories (.txt, .jsonl); default: the bundled corpus",
    )
    d.add_argument("--tokenizer", help="a tokenizer.json (or a directory holding one)")
    d.add_argument("--vocab-size", type=_positive_int, help="BPE vocabulary size to train")
    d.add_argument("--text-field", default="text", help="field holding the text in .jsonl")
    d.add_argument("--eval-fraction", type=float, default=0.02, help="share of sequences held out")
    d.add_argument("--cache-dir", default=default_cache_dir(), help="tokenizer/token cache")
    d.add_argument(
        "--num-workers",
        type=_non_negative_int,
        help="DataLoader worker processes (default: 2 on GPU, 0 on CPU)",
    )

    t = p.add_argument_group("training")
    t.add_argument("--max-steps", type=_positive_int, default=300, help="optimizer steps")
    t.add_argument("--micro-batch", type=_positive_int, help="sequences per rank per pass")
    t.add_argument("--grad-accum", type=_positive_int, help="micro-batches per step")
    t.add_argument(
        "--global-batch-tokens",
        type=_positive_int,
        help="tokens per optimizer step over all ranks (sets --grad-accum)",
    )
    t.add_argument("--lr", type=_positive_float, default=1e-3, help="peak learning rate")
    t.add_argument("--min-lr-ratio", type=float, default=0.1, help="final LR as a share of --lr")
    t.add_argument("--warmup-steps", type=_non_negative_int, default=30)
    t.add_argument("--weight-decay", type=float, default=0.1)
    t.add_argument("--beta1", type=float, default=0.9)
    t.add_argument("--beta2", type=float, default=0.95)
    t.add_argument("--eps", type=_positive_float, default=1e-8)
    t.add_argument("--grad-clip", type=float, default=1.0, help="0 disables clipping")
    t.add_argument("--precision", choices=PRECISIONS, default="fp32")
    t.add_argument("--strategy", choices=STRATEGIES, default="ddp")
    t.add_argument("--activation-checkpointing", action="store_true")
    t.add_argument("--compile", action="store_true", help="torch.compile each decoder layer")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    t.add_argument("--seed", type=int, default=1234)
    t.add_argument(
        "--deterministic", action="store_true", help="torch.use_deterministic_algorithms"
    )

    o = p.add_argument_group("evaluation, checkpoints, output")
    o.add_argument("--eval-every", type=_non_negative_int, default=100, help="0: only at end")
    o.add_argument("--eval-batches", type=_positive_int, default=20, help="max eval batches")
    o.add_argument("--log-every", type=_positive_int, default=10)
    o.add_argument(
        "--checkpoint-every", type=_non_negative_int, default=100, help="0: only at the end"
    )
    o.add_argument("--keep-checkpoints", type=_positive_int, default=3, help="keep last K")
    o.add_argument("--output-dir", default="runs/causal_lm")
    o.add_argument(
        "--resume",
        help="'auto' (latest complete checkpoint in the output dir, if any) or a checkpoint "
        "directory; CP_RESUME_FROM wins under the control plane",
    )
    o.add_argument("--no-export", action="store_true", help="skip OUTPUT_DIR/final")
    o.add_argument(
        "--no-register",
        action="store_true",
        help="as a control-plane job, do not register the final model in the model registry",
    )
    o.add_argument("--peak-tflops", type=_positive_float, help="accelerator peak for MFU")
    return p


def parse_config(argv: list[str] | None = None) -> RecipeConfig:
    """Parse and validate flags; exits with status 2 and a message on bad input."""
    parser = build_parser()
    a = parser.parse_args(argv)
    preset = PRESETS[a.preset]

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    seq_len = pick(a.seq_len, preset.seq_len)
    max_positions = pick(a.max_positions, preset.max_positions)
    if seq_len > max_positions:
        parser.error(
            f"--seq-len {seq_len} is longer than the model allows "
            f"(max_position_embeddings={max_positions} for preset {a.preset!r}); "
            "raise --max-positions or shorten --seq-len"
        )
    hidden = pick(a.hidden, preset.hidden)
    heads = pick(a.heads, preset.heads)
    kv_heads = pick(a.kv_heads, min(preset.kv_heads, heads))
    if hidden % heads:
        parser.error(f"--hidden {hidden} is not divisible by --heads {heads}")
    if (hidden // heads) % 2:
        parser.error(f"head dim {hidden // heads} must be even (rotary embeddings)")
    if heads % kv_heads:
        parser.error(f"--heads {heads} is not divisible by --kv-heads {kv_heads}")
    if not 0.0 < a.eval_fraction < 0.5:
        parser.error("--eval-fraction must be in (0, 0.5)")
    if not 0.0 <= a.min_lr_ratio <= 1.0:
        parser.error("--min-lr-ratio must be in [0, 1]")
    if a.grad_clip < 0:
        parser.error("--grad-clip must be >= 0")
    if a.global_batch_tokens is not None and a.global_batch_tokens % seq_len:
        parser.error(
            f"--global-batch-tokens {a.global_batch_tokens} is not a multiple of "
            f"--seq-len {seq_len}"
        )
    if a.resume is not None and a.resume != "auto" and not Path(a.resume).is_dir():
        parser.error(f"--resume {a.resume}: no such checkpoint directory")
    if a.tokenizer is not None and not Path(a.tokenizer).exists():
        parser.error(f"--tokenizer {a.tokenizer}: no such file or directory")
    if a.tokenizer is not None and a.vocab_size is not None:
        parser.error("--vocab-size only applies when the tokenizer is trained (no --tokenizer)")

    return RecipeConfig(
        preset=a.preset,
        layers=pick(a.layers, preset.layers),
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        intermediate=pick(a.intermediate, preset.intermediate),
        seq_len=seq_len,
        max_positions=max_positions,
        tie_embeddings=preset.tie_embeddings and not a.untie_embeddings,
        data=[str(x) for x in a.data],
        tokenizer=a.tokenizer,
        vocab_size=pick(a.vocab_size, preset.vocab_size),
        text_field=a.text_field,
        eval_fraction=a.eval_fraction,
        cache_dir=a.cache_dir,
        num_workers=a.num_workers,
        max_steps=a.max_steps,
        micro_batch=pick(a.micro_batch, preset.micro_batch),
        grad_accum=a.grad_accum,
        global_batch_tokens=a.global_batch_tokens,
        lr=a.lr,
        min_lr_ratio=a.min_lr_ratio,
        warmup_steps=a.warmup_steps,
        weight_decay=a.weight_decay,
        beta1=a.beta1,
        beta2=a.beta2,
        eps=a.eps,
        grad_clip=a.grad_clip,
        precision=a.precision,
        strategy=a.strategy,
        activation_checkpointing=a.activation_checkpointing,
        compile=a.compile,
        device=a.device,
        eval_every=a.eval_every,
        eval_batches=a.eval_batches,
        log_every=a.log_every,
        checkpoint_every=a.checkpoint_every,
        keep_checkpoints=a.keep_checkpoints,
        seed=a.seed,
        output_dir=a.output_dir,
        resume=a.resume,
        deterministic=a.deterministic,
        export=not a.no_export,
        register=not a.no_register,
        peak_tflops=a.peak_tflops,
    )


def resolve_batch(cfg: RecipeConfig, world_size: int) -> tuple[int, int]:
    """(micro_batch, grad_accum) for this world size; raises ValueError if impossible."""
    mb = cfg.micro_batch
    if cfg.global_batch_tokens is not None:
        seqs = cfg.global_batch_tokens // cfg.seq_len
        per_pass = mb * world_size
        if seqs % per_pass:
            raise ValueError(
                f"--global-batch-tokens {cfg.global_batch_tokens} = {seqs} sequences of "
                f"{cfg.seq_len} is not divisible by micro-batch {mb} x world size "
                f"{world_size}"
            )
        accum = seqs // per_pass
        if cfg.grad_accum is not None and cfg.grad_accum != accum:
            raise ValueError(
                f"--grad-accum {cfg.grad_accum} contradicts --global-batch-tokens "
                f"(which needs {accum})"
            )
        return mb, accum
    return mb, cfg.grad_accum or 1
