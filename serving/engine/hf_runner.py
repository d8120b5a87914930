"""The generic runner: any transformers causal LM, through the model's own forward.

Owns the fallback path for architectures the lean runner does not cover. Each slot keeps
its own transformers `DynamicCache`; a step runs the model once per sequence (a decode
token or a prompt chunk) with explicit position ids. It is correct for any model that
takes a cache and position ids, and slower than the lean runner because sequences are
not batched into one GEMM.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from serving.engine.runner import StepBatch


class HFRunner:
    """Per-sequence forward through the transformers model (see module docstring)."""

    name = "hf"

    def __init__(
        self, model: nn.Module, device: torch.device, num_slots: int, max_model_len: int
    ) -> None:
        self.model = model
        self.device = device
        self.num_slots = num_slots
        self.max_model_len = max_model_len
        self.vocab_size = int(model.config.vocab_size)
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep = "logits_to_keep" in params
        self._caches: dict[int, object] = {}

    def _run(
        self, slot: int, tokens: list[int], start: int, all_logits: bool = False
    ) -> torch.Tensor:
        from transformers import DynamicCache

        cache = self._caches.get(slot) if start > 0 else None
        if cache is None:
            cache = DynamicCache(config=self.model.config)
        ids = torch.tensor([tokens], device=self.device)
        positions = torch.arange(start, start + len(tokens), device=self.device)[None]
        kwargs = {self._cache_kw: cache, "use_cache": True, "position_ids": positions}
        if self._keep and not all_logits:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=ids, **kwargs)
        new_cache = getattr(out, self._cache_kw, None) or getattr(out, "past_key_values", None)
        self._caches[slot] = new_cache if new_cache is not None else cache
        return out.logits[0] if all_logits else out.logits[0, -1]

    def forward(self, batch: StepBatch) -> torch.Tensor:
        rows = []
        for slot, token, pos in zip(
            batch.decode_slots, batch.decode_tokens, batch.decode_positions, strict=True
        ):
            rows.append(self._run(slot, [token], pos))
        if batch.all_logits:
            rows = [r[None] for r in rows]
        for chunk in batch.prefill:
            logits = self._run(chunk.slot, chunk.tokens, chunk.start, batch.all_logits)
            if batch.all_logits:
                rows.append(logits)
            elif chunk.wants_logits:
                rows.append(logits)
        if not rows:
            return torch.empty(0, self.vocab_size, device=self.device)
        if batch.all_logits:
            return torch.cat(rows).float()
        return torch.stack(rows).float()

    def release(self, slot: int) -> None:
        self._caches.pop(slot, None)

    def memory_bytes(self) -> dict[str, int]:
        weights = sum(
            t.numel() * t.element_size()
            for t in self.model.state_dict().values()
            if isinstance(t, torch.Tensor)
        )
        return {"weights": int(weights), "kv_cache_reserved": 0}
