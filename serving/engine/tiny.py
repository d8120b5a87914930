"""Builds small random-init Llama checkpoints with a locally trained tokenizer.

Owns the model directories that tests, benchmarks and smoke runs serve: no download,
nothing from a hub. The tokenizer is a byte-level BPE trained with `tokenizers` on text
that is already on the machine (the Python standard library's sources), wrapped as a
`PreTrainedTokenizerFast` with a small chat template, and saved beside a
`LlamaForCausalLM` in safetensors. `python -m serving.engine.tiny --out DIR` makes one.
"""

from __future__ import annotations

import argparse
import json
import sysconfig
from pathlib import Path
from typing import Any

PRESETS: dict[str, dict[str, int]] = {
    # hidden 64, 2 layers, vocab ~512: fast enough for a test session.
    "test": dict(
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=2048,
    ),
    # The reference model of BENCHMARKS.md and ANCHORS.md (31.6M parameters).
    "reference": dict(
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=8192,
        max_position_embeddings=1024,
    ),
}

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>"]


def corpus_text(max_chars: int = 2_000_000, skip_chars: int = 0) -> str:
    """Deterministic English-and-code text from the standard library's sources."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts: list[str] = []
    total = 0
    skipped = 0
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if skipped < skip_chars:
            skipped += len(text)
            continue
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "".join(parts)[:max_chars]


def train_tokenizer(vocab_size: int, text: str) -> Any:
    """Train a byte-level BPE on `text`; returns a transformers PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = text.splitlines()
    tok.train_from_iterator((lines[i : i + 1000] for i in range(0, len(lines), 1000)), trainer)
    bos, eos, pad = SPECIAL_TOKENS
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def train(model: Any, tokenizer: Any, steps: int, seq_len: int = 64, batch: int = 16) -> float:
    """A few AdamW steps of next-token prediction on the corpus; returns the last loss.

    A random-init model predicts a near-uniform distribution; a briefly trained one has
    peaked, structured predictions, which makes greedy comparisons and perplexity
    checks meaningful.
    """
    import torch

    ids = torch.tensor(tokenizer(corpus_text(300_000)).input_ids)
    n = (len(ids) - 1) // seq_len
    windows = ids[: n * seq_len + 1]
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    loss = float("nan")
    for _ in range(steps):
        starts = torch.randint(0, n, (batch,), generator=gen) * seq_len
        x = torch.stack([windows[s : s + seq_len] for s in starts.tolist()])
        out = model(input_ids=x, labels=x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        loss = out.loss.item()
    model.eval()
    return loss


def build_tiny_llama(
    out_dir: str | Path,
    preset: str = "test",
    seed: int = 0,
    corpus_chars: int = 400_000,
    train_steps: int = 0,
    **overrides: int,
) -> Path:
    """Write a Llama + tokenizer to `out_dir` (safetensors) and return it.

    Random-init unless `train_steps` > 0 (then briefly trained on local text).
    """
    import torch

    from serving.engine.quant import defer_transformers_torchao

    defer_transformers_torchao()
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    shape = {**PRESETS[preset], **overrides}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(shape["vocab_size"], corpus_text(corpus_chars))
    tokenizer.save_pretrained(out)
    ids = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)
    shape["vocab_size"] = len(tokenizer)
    config = LlamaConfig(
        **shape,
        bos_token_id=ids[0],
        eos_token_id=ids[1],
        pad_token_id=ids[2],
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if train_steps:
        train(model, tokenizer, train_steps)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[0], eos_token_id=ids[1], pad_token_id=ids[2]
    )
    model.save_pretrained(out, safe_serialization=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory to write")
    parser.add_argument("--preset", default="test", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-steps", type=int, default=0, help="0: random init")
    args = parser.parse_args(argv)
    path = build_tiny_llama(args.out, args.preset, args.seed, train_steps=args.train_steps)
    print(json.dumps({"event": "built", "path": str(path), "preset": args.preset}))


if __name__ == "__main__":
    main()
