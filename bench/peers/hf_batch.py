"""Static batched generation with transformers, shared by the LitServe and Ray Serve peers.

Owns what a typical LitServe/Ray Serve LLM deployment does per batch: tokenize the
prompts with left padding, `model.generate` greedily for exactly N new tokens, decode.
Runs inside the peers' own virtualenvs (var/bench-venvs/), so it imports nothing of ours.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


class BatchGenerator:
    def __init__(self, model_dir: str, new_tokens: int = 64) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).eval()
        self.new_tokens = new_tokens

    @torch.inference_mode()
    def __call__(self, prompts: list[str]) -> list[dict]:
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True)
        out = self.model.generate(
            **enc,
            max_new_tokens=self.new_tokens,
            min_new_tokens=self.new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        new = out[:, enc["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [{"text": t, "completion_tokens": int(new.shape[1])} for t in texts]
