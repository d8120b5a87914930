"""One request's state inside the engine: tokens, text, stop handling, and its output events.

Owns `Sequence` (prompt, generated ids, cache slot, how much of the prompt is prefilled),
incremental detokenization (the tokenizer's Rust `DecodeStream` when there is one, else
a prefix/read-offset decoder that never splits a UTF-8 character), stop strings (text
that could still become a stop string is held back from the stream until it cannot),
and `RequestOutput`, the event a sink receives for every new piece of a sequence.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from serving.engine.sampling import SamplingParams, TokenLogprob

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_ABORT = "abort"
FINISH_ERROR = "error"

_ids = itertools.count()


@dataclass(slots=True)
class RequestOutput:
    """What a sequence produced since its last output (a delta), and whether it ended."""

    request_id: str
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    finished: bool
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None
    first_token_delay: float | None = None  # seconds from submit to the first token


class OutputSink(Protocol):
    """Receives RequestOutputs. With a `loop`, `put` runs on that loop's thread.

    A sink whose `wants_deltas` attribute is False gets one output, at the end, with
    the whole text (non-streaming clients: no per-token wake-ups of their loop).
    """

    loop: asyncio.AbstractEventLoop | None

    def put(self, output: RequestOutput) -> None: ...


class IncrementalDetokenizer:
    """Turns one token id at a time into text deltas."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int]) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._tokenizer = tokenizer
        self._stream = None
        if backend is not None:
            from tokenizers.decoders import DecodeStream

            self._backend = backend
            self._stream = DecodeStream(ids=list(prompt_ids[-6:]), skip_special_tokens=True)
        else:
            self._ids = list(prompt_ids[-6:])
            self._prefix = 0
            self._read = len(self._ids)

    def final_text(self, output_ids: list[int], text: str) -> str:
        """The whole output decoded at once, when it extends the streamed text.

        A stream withholds a trailing partial UTF-8 character; a one-shot decode turns it
        into U+FFFD. At the end, the one-shot decode is the answer.
        """
        full = self._tokenizer.decode(output_ids, skip_special_tokens=True)
        return full if full.startswith(text) else text

    def step(self, token_id: int) -> str:
        if self._stream is not None:
            return self._stream.step(self._backend, token_id) or ""
        self._ids.append(token_id)
        decode = self._tokenizer.decode
        prefix_text = decode(self._ids[self._prefix : self._read], skip_special_tokens=True)
        new_text = decode(self._ids[self._prefix :], skip_special_tokens=True)
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return new_text[len(prefix_text) :]
        return ""


class Sequence:
    """A request in the engine, from submission until its final output."""

    __slots__ = (
        "arrival",
        "detok",
        "emitted",
        "emitted_any",
        "finish_reason",
        "finished",
        "first_token_time",
        "generator",
        "last_token",
        "logprobs",
        "max_stop",
        "num_computed",
        "output_ids",
        "params",
        "pending_ids",
        "prompt_ids",
        "request_id",
        "sink",
        "slot",
        "text",
        "wants_deltas",
    )

    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        sink: OutputSink,
        detok: IncrementalDetokenizer,
        generator: torch.Generator | None,
        request_id: str | None = None,
    ) -> None:
        self.request_id = request_id or f"seq-{next(_ids)}"
        self.prompt_ids = prompt_ids
        self.params = params
        self.sink = sink
        self.wants_deltas = bool(getattr(sink, "wants_deltas", True))
        self.emitted_any = False
        self.detok = detok
        self.generator = generator
        self.arrival = time.monotonic()
        self.first_token_time: float | None = None
        self.slot = -1
        self.num_computed = 0  # tokens whose K/V are in the cache
        self.output_ids: list[int] = []
        self.pending_ids: list[int] = []  # ids not yet sent to the sink
        self.logprobs: list[TokenLogprob] = []
        self.last_token = -1
        self.text = ""
        self.emitted = 0  # characters of `text` already sent
        self.max_stop = max((len(s) for s in params.stop), default=0)
        self.finished = False
        self.finish_reason: str | None = None

    @property
    def prefilled(self) -> bool:
        return bool(self.output_ids)

    def append(self, token_id: int, logprob: TokenLogprob | None, eos_ids: frozenset[int]) -> None:
        """Record a sampled token and decide whether the sequence is finished."""
        params = self.params
        self.output_ids.append(token_id)
        self.pending_ids.append(token_id)
        self.last_token = token_id
        if logprob is not None:
            self.logprobs.append(logprob)
        if (token_id in eos_ids and not params.ignore_eos) or token_id in params.stop_token_ids:
            self.finish(FINISH_STOP)
            return
        before = len(self.text)
        self.text += self.detok.step(token_id)
        if self.max_stop and len(self.text) > before:
            self._check_stop(before)
        if not self.finished and len(self.output_ids) >= params.max_tokens:
            self.finish(FINISH_LENGTH)

    def _check_stop(self, before: int) -> None:
        start = max(0, before - self.max_stop + 1)
        best = -1
        hit = ""
        for stop in self.params.stop:
            i = self.text.find(stop, start)
            if i != -1 and (best == -1 or i < best):
                best, hit = i, stop
        if best != -1:
            keep = best + len(hit) if self.params.include_stop_str_in_output else best
            self.text = self.text[:keep]
            self.finish(FINISH_STOP, truncated=True)

    def finish(self, reason: str, truncated: bool = False) -> None:
        if not truncated and reason in (FINISH_STOP, FINISH_LENGTH) and self.output_ids:
            self.text = self.detok.final_text(self.output_ids, self.text)
        self.finished = True
        self.finish_reason = reason

    def take_output(self) -> RequestOutput:
        """The delta since the last output; holds back text that may begin a stop string."""
        end = len(self.text)
        if not self.finished and self.max_stop:
            end = max(self.emitted, end - self.max_stop + 1)
        text = self.text[self.emitted : end]
        self.emitted = end
        ids = self.pending_ids
        self.pending_ids = []
        lps = None
        if self.params.logprobs is not None and ids:
            lps = self.logprobs[len(self.output_ids) - len(ids) :]
        return RequestOutput(
            request_id=self.request_id,
            text=text,
            token_ids=ids,
            logprobs=lps,
            finished=self.finished,
            finish_reason=self.finish_reason,
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=len(self.output_ids),
            first_token_delay=None
            if self.first_token_time is None
            else self.first_token_time - self.arrival,
        )
