"""The contract between the scheduler and a model runner: one step's batch, and the runner API.

Owns `StepBatch` (what the scheduler asks a runner to compute in one forward: one new
token for every decoding sequence plus prompt chunks for sequences in prefill) and the
`ModelRunner` protocol that the lean Llama runner and the generic transformers runner
both implement. Sequences live in cache *slots* (0 .. num_slots-1); the scheduler hands
out slots and tells the runner when one is released.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass(slots=True)
class PrefillChunk:
    """Prompt tokens `tokens` of the sequence in `slot`, at positions start .. start+len-1."""

    slot: int
    tokens: list[int]
    start: int
    wants_logits: bool  # True when this chunk ends the prompt (sample the first token)


@dataclass(slots=True)
class StepBatch:
    """One forward: decode rows first (one token each), then prefill chunks."""

    decode_slots: list[int] = field(default_factory=list)
    decode_tokens: list[int] = field(default_factory=list)
    decode_positions: list[int] = field(default_factory=list)
    prefill: list[PrefillChunk] = field(default_factory=list)
    all_logits: bool = False  # scoring: logits for every token, not only sampled rows

    @property
    def num_tokens(self) -> int:
        return len(self.decode_slots) + sum(len(c.tokens) for c in self.prefill)

    @property
    def num_logit_rows(self) -> int:
        if self.all_logits:
            return self.num_tokens
        return len(self.decode_slots) + sum(1 for c in self.prefill if c.wants_logits)


class ModelRunner(Protocol):
    """Computes next-token logits for a StepBatch, keeping each slot's KV cache."""

    name: str
    num_slots: int
    max_model_len: int
    vocab_size: int
    device: torch.device

    def forward(self, batch: StepBatch) -> torch.Tensor:
        """fp32 logits [num_logit_rows, vocab]: decode rows in order, then prefill rows."""
        ...

    def release(self, slot: int) -> None:
        """Forget the cache of `slot` (the scheduler will reuse it)."""
        ...

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held by weights and by the KV cache."""
        ...
