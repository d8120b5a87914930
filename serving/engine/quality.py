"""Quality of a quantized runner: perplexity and agreement with an fp32 reference.

Owns scoring held-out text through a runner (the same forward the engine serves with,
so the number describes what clients get): perplexity from teacher-forced logits over
prompt chunks, plus top-1 agreement and the mean KL divergence between two runners'
next-token distributions.
"""

from __future__ import annotations

import math

import torch

from serving.engine.runner import ModelRunner, PrefillChunk, StepBatch


@torch.inference_mode()
def token_logits(
    runner: ModelRunner, ids: list[int], chunk: int = 128, slot: int = 0
) -> torch.Tensor:
    """fp32 logits [len(ids), vocab] for every position, computed chunk by chunk."""
    if len(ids) > runner.max_model_len:
        raise ValueError(f"{len(ids)} tokens exceed max_model_len {runner.max_model_len}")
    parts = []
    for start in range(0, len(ids), chunk):
        piece = ids[start : start + chunk]
        batch = StepBatch(prefill=[PrefillChunk(slot, piece, start, True)], all_logits=True)
        parts.append(runner.forward(batch))
    runner.release(slot)
    return torch.cat(parts)


def perplexity(runner: ModelRunner, ids: list[int], chunk: int = 128) -> float:
    """exp(mean negative log-likelihood) of ids[1:] given their prefixes."""
    logits = token_logits(runner, ids, chunk)
    nll = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="mean")
    return math.exp(nll.item())


def compare(reference: ModelRunner, other: ModelRunner, ids: list[int]) -> dict[str, float]:
    """Perplexity of both, top-1 agreement and mean KL(reference || other)."""
    ref = token_logits(reference, ids)
    got = token_logits(other, ids)
    target = torch.tensor(ids[1:])
    ce = torch.nn.functional.cross_entropy
    lp_ref = torch.log_softmax(ref[:-1], dim=-1)
    lp_got = torch.log_softmax(got[:-1], dim=-1)
    kl = (lp_ref.exp() * (lp_ref - lp_got)).sum(-1).mean().item()
    return {
        "ppl_reference": math.exp(ce(ref[:-1], target).item()),
        "ppl_other": math.exp(ce(got[:-1], target).item()),
        "top1_agreement": (ref.argmax(-1) == got.argmax(-1)).float().mean().item(),
        "kl": kl,
    }
