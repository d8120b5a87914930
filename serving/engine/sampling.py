"""Sampling parameters and the batched sampler.

Owns `SamplingParams` (validated, with the offending field named in the error), and
`Sampler`, which turns one step's logits `[rows, vocab]` into next tokens for every row
at once: greedy rows by argmax, sampled rows by temperature, top-k and top-p filtering
and the exponential-race trick (argmax of p / Exp(1) noise, which is a draw from p),
with a per-request `torch.Generator` for rows that carry a seed. Optional logprobs (the
chosen token's and the top-n alternatives', from the model's unmodified distribution).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

MAX_LOGPROBS = 20


class InvalidParam(ValueError):
    """A request field with a bad value; `field` names it, the message says what to fix."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


@dataclass(slots=True)
class SamplingParams:
    """How to pick tokens for one sequence, and when to stop."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: off; n >= 0: chosen token + n alternatives
    include_stop_str_in_output: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def validate(self, vocab_size: int | None = None) -> None:
        """Raise InvalidParam naming the first field that is out of range."""
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InvalidParam("max_tokens", "max_tokens must be an integer >= 1")
        if not 0.0 <= self.temperature <= 2.0:
            raise InvalidParam("temperature", "temperature must be between 0 and 2")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidParam("top_p", "top_p must be in (0, 1]")
        if self.top_k < -1:
            raise InvalidParam("top_k", "top_k must be -1 or 0 (off) or a positive integer")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise InvalidParam("seed", "seed must be an integer in [0, 2**63)")
        if any(not s for s in self.stop):
            raise InvalidParam("stop", "stop strings must be non-empty")
        if vocab_size is not None and any(not 0 <= t < vocab_size for t in self.stop_token_ids):
            raise InvalidParam("stop_token_ids", f"stop_token_ids must be in [0, {vocab_size})")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise InvalidParam("logprobs", f"logprobs must be between 0 and {MAX_LOGPROBS}")


@dataclass(slots=True)
class TokenLogprob:
    """The chosen token's logprob and the top alternatives (token id -> logprob)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


class Sampler:
    """Picks the next token for every row of a step's logits in a few batched ops."""

    def __init__(self, device: torch.device, seed: int = 0) -> None:
        self.device = device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def new_generator(self, seed: int) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        return gen

    def sample(
        self,
        logits: torch.Tensor,
        params: list[SamplingParams],
        generators: list[torch.Generator | None],
    ) -> tuple[list[int], list[TokenLogprob | None] | None]:
        """Next token per row; logprobs per row (None for rows that did not ask)."""
        greedy = [p.greedy for p in params]
        if all(greedy):
            chosen = logits.argmax(dim=-1)
        else:
            chosen = self._sample(logits, params, greedy, generators)
        tokens = chosen.tolist()
        if all(p.logprobs is None for p in params):
            return tokens, None
        return tokens, self._logprobs(logits, params, chosen)

    def _sample(
        self,
        logits: torch.Tensor,
        params: list[SamplingParams],
        greedy: list[bool],
        generators: list[torch.Generator | None],
    ) -> torch.Tensor:
        dev = logits.device
        temps = torch.tensor(
            [1.0 if g else p.temperature for p, g in zip(params, greedy, strict=True)],
            device=dev,
        )
        x = logits / temps[:, None]
        top_k = [p.top_k if p.top_k > 0 else 0 for p in params]
        if any(top_k):
            kmax = min(max(top_k), x.shape[-1])
            kth = x.topk(kmax, dim=-1).values  # sorted, descending
            idx = torch.tensor([min(k, kmax) - 1 if k else 0 for k in top_k], device=dev)
            thresh = kth.gather(1, idx[:, None])
            off = torch.tensor([k == 0 for k in top_k], device=dev)[:, None]
            thresh = thresh.masked_fill(off, float("-inf"))
            x = x.masked_fill(x < thresh, float("-inf"))
        top_p = [p.top_p for p in params]
        if any(tp < 1.0 for tp in top_p):
            sorted_x, order = x.sort(dim=-1, descending=True)
            probs = sorted_x.softmax(dim=-1)
            before = probs.cumsum(dim=-1) - probs
            drop = before > torch.tensor(top_p, device=dev)[:, None]
            sorted_x = sorted_x.masked_fill(drop, float("-inf"))
            x = torch.empty_like(x).scatter_(1, order, sorted_x)
        probs = x.softmax(dim=-1)
        noise = torch.empty_like(probs)
        noise.exponential_(generator=self.generator)
        for i, gen in enumerate(generators):
            if gen is not None and not greedy[i]:
                noise[i].exponential_(generator=gen)
        sampled = (probs / noise).argmax(dim=-1)
        if any(greedy):
            mask = torch.tensor(greedy, device=dev)
            sampled = torch.where(mask, logits.argmax(dim=-1), sampled)
        return sampled

    def _logprobs(
        self, logits: torch.Tensor, params: list[SamplingParams], chosen: torch.Tensor
    ) -> list[TokenLogprob | None]:
        want = [i for i, p in enumerate(params) if p.logprobs is not None]
        idx = torch.tensor(want, device=logits.device)
        lp = torch.log_softmax(logits.index_select(0, idx), dim=-1)
        picked = lp.gather(1, chosen.index_select(0, idx)[:, None])[:, 0].tolist()
        kmax = max(params[i].logprobs or 0 for i in want)
        top_vals: list[list[float]] = [[] for _ in want]
        top_ids: list[list[int]] = [[] for _ in want]
        if kmax:
            vals, ids = lp.topk(kmax, dim=-1)
            top_vals, top_ids = vals.tolist(), ids.tolist()
        out: list[TokenLogprob | None] = [None] * len(params)
        chosen_list = chosen.tolist()
        for j, i in enumerate(want):
            k = params[i].logprobs or 0
            top = list(zip(top_ids[j][:k], top_vals[j][:k], strict=True))
            out[i] = TokenLogprob(chosen_list[i], picked[j], top)
        return out
