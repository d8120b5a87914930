"""Hugging Face directory writing: config, tokenizer files, weights and a model card.

Every checkpoint carries the config and tokenizer files next to its ``model.safetensors``
(see :mod:`.checkpoint`); the final export is the same minus the training state, plus a
README.md model card. Both load with ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, LlamaConfig, PreTrainedTokenizerFast

from .checkpoint import write_tensors
from .data import TokenizerInfo


def write_hf_files(directory: Path, config: LlamaConfig, tok: TokenizerInfo) -> None:
    """config.json, generation_config.json and tokenizer files into ``directory``."""
    config.save_pretrained(directory)
    GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    ).save_pretrained(directory)
    fast = PreTrainedTokenizerFast(
        tokenizer_file=str(tok.path),
        bos_token=tok.eos_token,
        eos_token=tok.eos_token,
        pad_token=tok.eos_token,
        model_max_length=config.max_position_embeddings,
    )
    fast.save_pretrained(directory)
    # Name the class every transformers version (and vLLM) knows, not v5's alias.
    cfg_path = directory / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(tok_cfg, indent=2) + "\n")


def model_card(info: dict[str, Any]) -> str:
    """A short README.md for the exported model."""
    eval_loss = info.get("eval_loss")
    ppl = info.get("eval_perplexity")
    ev = "not measured" if eval_loss is None else f"{eval_loss:.4f} (perplexity {ppl:.2f})"
    files = info["data_files"]
    shown = ", ".join(files[:8]) + (f", ... ({len(files)} files)" if len(files) > 8 else "")
    return "\n".join(
        [
            "---",
            "library_name: transformers",
            "pipeline_tag: text-generation",
            "tags: [llama, causal-lm, gpu-controlplane]",
            "---",
            "",
            f"# {info['name']}",
            "",
            "A Llama-architecture causal language model trained from scratch with the "
            "control plane's built-in recipe (`python -m workers.recipes.causal_lm`).",
            "",
            "| | |",
            "|---|---|",
            f"| parameters | {info['parameters']:,} |",
            f"| shape | {info['shape']} |",
            f"| training steps | {info['steps']:,} |",
            f"| training tokens | {info['tokens']:,} |",
            f"| held-out eval loss | {ev} |",
            f"| precision / strategy | {info['precision']} / {info['strategy']} x "
            f"{info['world_size']} |",
            f"| data | {shown} |",
            f"| data sha256 | `{info['data_hash'][:16]}` |",
            f"| tokenizer | byte-level BPE, {info['vocab']:,} tokens |",
            "",
            "## Use",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "tok = AutoTokenizer.from_pretrained(PATH)",
            "model = AutoModelForCausalLM.from_pretrained(PATH)",
            'ids = tok("To be, or not to be", return_tensors="pt")',
            "print(tok.decode(model.generate(**ids, max_new_tokens=40)[0]))",
            "```",
            "",
            "A small model trained on a small corpus: it imitates the style of its data "
            "and knows nothing else. Not for any use where its output matters.",
            "",
        ]
    )


def export_final(
    out_dir: Path,
    model_sd: dict[str, torch.Tensor],
    config: LlamaConfig,
    tok: TokenizerInfo,
    card: dict[str, Any],
) -> Path:
    """Write ``out_dir`` (a Hugging Face directory) atomically; rank 0 only."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp-{out_dir.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_tensors(tmp / "model.safetensors", model_sd)
    write_hf_files(tmp, config, tok)
    (tmp / "README.md").write_text(model_card(card))
    old = out_dir.parent / f".old-{out_dir.name}"
    if out_dir.exists():
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir
