"""The engine: a thread that runs continuous batching over a model runner.

Owns admission (a bounded queue: `QueueFull` when `max_queue` requests wait), the
scheduler and the step loop. Each step builds one `StepBatch`: one token for every
decoding sequence, then prompt chunks (chunked prefill) for sequences being admitted,
up to `max_num_batched_tokens` tokens, so a long prompt never stalls running sequences
for more than one chunk. Sequences join at any step and leave the moment they finish,
are cancelled (`abort`) or fail; their slot is reused at the next step. A lone request
waits up to `max_wait_ms` for company when the engine is idle.

Outputs go to each request's sink once per step; sinks that belong to an asyncio loop
are served with one `call_soon_threadsafe` per loop per step, not one per token.
A streaming sequence gets its first token at once, then a delta every
`stream_interval` tokens (vLLM's `--stream-interval`: fewer, larger chunks cost the
server and its clients less per token when many streams run at once). All
torch work happens on the engine thread (torch releases the GIL inside kernels).
"""

from __future__ import annotations

import collections
import heapq
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from serving.engine.runner import ModelRunner, PrefillChunk, StepBatch
from serving.engine.sampling import InvalidParam, Sampler, SamplingParams
from serving.engine.sequence import (
    FINISH_ABORT,
    FINISH_ERROR,
    FINISH_LENGTH,
    IncrementalDetokenizer,
    OutputSink,
    RequestOutput,
    Sequence,
)

log = logging.getLogger("serving.engine")


class QueueFull(RuntimeError):
    """More than `max_queue` requests are waiting for a slot."""


class EngineClosed(RuntimeError):
    """The engine is draining or stopped and takes no new requests."""


@dataclass(slots=True)
class SchedulerConfig:
    max_batch_size: int = 32
    max_wait_ms: float = 0.0
    max_queue: int = 512
    max_num_batched_tokens: int = 256
    stream_interval: int = 1
    threads: int | None = None
    seed: int = 0
    # A new request whose prompt starts with at least this many of the tokens a free slot
    # still holds (a finished request's K/V stay in its slot until overwritten) takes
    # that slot and skips prefilling them. 0 turns it off; runners that cannot keep a
    # released slot's cache (``reuses_slots`` false) never do it.
    prefix_reuse_min: int = 16


@dataclass(slots=True)
class EngineStats:
    """Counters the replica exports; written by the engine thread, read anywhere."""

    steps: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    finished: int = 0
    aborted: int = 0
    running: int = 0
    waiting: int = 0
    last_batch_size: int = 0
    prefix_hits: int = 0  # requests that started from a free slot's cached prefix
    prefix_tokens_reused: int = 0  # prompt tokens they did not prefill


class Engine:
    """Continuous batching over a ModelRunner, in its own thread."""

    def __init__(
        self,
        runner: ModelRunner,
        tokenizer: Any,
        config: SchedulerConfig,
        eos_token_ids: set[int] | frozenset[int] = frozenset(),
    ) -> None:
        if config.max_batch_size > runner.num_slots:
            raise ValueError("max_batch_size exceeds the runner's cache slots")
        if config.max_num_batched_tokens < config.max_batch_size:
            raise ValueError("max_num_batched_tokens must be >= max_batch_size")
        self.runner = runner
        self.tokenizer = tokenizer
        self.config = config
        self.eos_ids = frozenset(eos_token_ids)
        self.max_model_len = runner.max_model_len
        self.sampler = Sampler(runner.device, config.seed)
        self.stats = EngineStats()
        self._inbox: collections.deque[Sequence] = collections.deque()
        self._aborts: collections.deque[str] = collections.deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._num_queued = 0  # submitted, not yet in a slot (guarded by _lock)
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._running: list[Sequence] = []
        self._by_id: dict[str, Sequence] = {}
        self._free = list(range(config.max_batch_size))
        heapq.heapify(self._free)
        # Free slot -> (release order, the token ids whose K/V it still holds).
        self._held: dict[int, tuple[int, list[int]]] = {}
        self._released = 0
        self._reuse = config.prefix_reuse_min if getattr(runner, "reuses_slots", False) else 0
        self._accepting = True
        self._stop = False
        self._thread: threading.Thread | None = None
        self.step_hook: Callable[[StepBatch, float], None] | None = None

    # -- public API (any thread) -----------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
            self._thread.start()

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        sink: OutputSink,
        request_id: str | None = None,
    ) -> str:
        """Queue a request; returns its id. Raises InvalidParam, QueueFull, EngineClosed."""
        if not self._accepting:
            raise EngineClosed("the engine is draining and takes no new requests")
        self.check_lengths(len(prompt_ids), params.max_tokens)
        params.validate(self.runner.vocab_size)
        if any(not 0 <= t < self.runner.vocab_size for t in prompt_ids):
            raise InvalidParam(
                "prompt", f"prompt token ids must be in [0, {self.runner.vocab_size})"
            )
        gen = None
        if params.seed is not None and not params.greedy:
            gen = self.sampler.new_generator(params.seed)
        seq = Sequence(
            list(prompt_ids),
            params,
            sink,
            IncrementalDetokenizer(self.tokenizer, prompt_ids),
            gen,
            request_id,
        )
        with self._lock:
            if self._num_queued >= self.config.max_queue:
                raise QueueFull(f"{self._num_queued} requests are already waiting")
            self._num_queued += 1
        self._inbox.append(seq)
        self._wake.set()
        return seq.request_id

    def check_lengths(self, prompt_len: int, max_tokens: int) -> None:
        """Raise InvalidParam when the prompt or prompt + max_tokens exceed max_model_len."""
        limit = self.max_model_len
        if prompt_len < 1:
            raise InvalidParam("prompt", "the prompt is empty")
        if prompt_len >= limit:
            raise InvalidParam(
                "prompt",
                f"the prompt has {prompt_len} tokens; this model's maximum context length is "
                f"{limit} tokens, which must also leave room for at least one new token",
            )
        if prompt_len + max_tokens > limit:
            raise InvalidParam(
                "max_tokens",
                f"max_tokens {max_tokens} + {prompt_len} prompt tokens exceeds the maximum "
                f"context length of {limit} tokens; ask for at most {limit - prompt_len}",
            )

    def abort(self, request_id: str) -> None:
        """Cancel a request; its slot and cache are freed at the start of the next step."""
        self._aborts.append(request_id)
        self._wake.set()

    @property
    def num_queued(self) -> int:
        return self._num_queued

    @property
    def num_running(self) -> int:
        return self.stats.running

    def stop_accepting(self) -> None:
        self._accepting = False

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop after finishing what is queued and running."""
        self._accepting = False
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def generate(
        self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]
    ) -> list[RequestOutput]:
        """Blocking convenience: run all prompts together, return each final output."""
        plist = params if isinstance(params, list) else [params] * len(prompts)
        sinks = [CollectingSink() for _ in prompts]
        for ids, p, sink in zip(prompts, plist, sinks, strict=True):
            self.submit(ids, p, sink)
        return [sink.result() for sink in sinks]

    # -- engine thread -----------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """False once the engine thread has stopped (after shutdown, or if it died)."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        with torch.inference_mode():
            while True:
                try:
                    if not self._iterate():
                        return
                except Exception as exc:
                    log.exception("engine step failed")
                    self._fail_running(f"{type(exc).__name__}: {exc}")

    def _iterate(self) -> bool:
        """One pass of the loop; False when the engine should stop."""
        self._wake.clear()
        self._ingest()
        if not self._running and not self._waiting:
            if self._stop and not self._inbox:
                return False
            self._wake.wait(0.5)
            return True
        if not self._running and self._should_wait_for_company():
            return True
        self._step()
        return True

    def _should_wait_for_company(self) -> bool:
        wait = self.config.max_wait_ms / 1000.0
        if wait <= 0 or len(self._waiting) >= self.config.max_batch_size or self._stop:
            return False
        remaining = self._waiting[0].arrival + wait - time.monotonic()
        if remaining <= 0:
            return False
        self._wake.wait(remaining)
        return True

    def _ingest(self) -> None:
        while self._inbox:
            seq = self._inbox.popleft()
            self._waiting.append(seq)
            self._by_id[seq.request_id] = seq
        if self._aborts:
            out: list[tuple[OutputSink, RequestOutput]] = []
            while self._aborts:
                seq = self._by_id.get(self._aborts.popleft())
                if seq is None or seq.finished:
                    continue
                seq.finish(FINISH_ABORT)
                self.stats.aborted += 1
                if seq.slot < 0:
                    self._waiting.remove(seq)
                    with self._lock:
                        self._num_queued -= 1
                out.append((seq.sink, seq.take_output()))
                self._retire(seq)
            self._running = [s for s in self._running if not s.finished]
            self._deliver(out)
        self.stats.waiting = len(self._waiting)
        self.stats.running = len(self._running)

    def _retire(self, seq: Sequence) -> None:
        self._by_id.pop(seq.request_id, None)
        if seq.slot >= 0:
            self.runner.release(seq.slot)
            if self._reuse and seq.num_computed >= self._reuse:
                computed = (seq.prompt_ids + seq.output_ids)[: seq.num_computed]
                self._released += 1
                self._held[seq.slot] = (self._released, computed)
            heapq.heappush(self._free, seq.slot)
            seq.slot = -1

    def _take_slot(self, seq: Sequence) -> int:
        """A free slot for ``seq``: the one holding the longest prefix of its prompt (its
        prefill then starts after that prefix), else the lowest one holding nothing, else
        the one released longest ago."""
        if not self._reuse or not self._held:
            slot = heapq.heappop(self._free)
            self._held.pop(slot, None)
            return slot
        prompt = seq.prompt_ids
        best, best_len = -1, 0
        for slot, (_, held) in self._held.items():
            n = _common_prefix(prompt, held)
            if n > best_len:
                best, best_len = slot, n
        best_len = min(best_len, len(prompt) - 1)  # the last prompt token gives the logits
        if best_len >= self._reuse:
            seq.num_computed = best_len
            self.stats.prefix_hits += 1
            self.stats.prefix_tokens_reused += best_len
            slot = best
        else:
            empty = [f for f in self._free if f not in self._held]
            if empty:
                slot = min(empty)
            else:
                slot = min(self._held, key=lambda f: self._held[f][0])
        self._free.remove(slot)
        heapq.heapify(self._free)
        self._held.pop(slot, None)
        return slot

    def _schedule(self) -> tuple[StepBatch, list[Sequence], list[tuple[Sequence, int]]]:
        batch = StepBatch()
        budget = self.config.max_num_batched_tokens
        decoding = [s for s in self._running if s.prefilled]
        decoding.sort(key=lambda s: s.slot)
        for s in decoding:
            batch.decode_slots.append(s.slot)
            batch.decode_tokens.append(s.last_token)
            batch.decode_positions.append(s.num_computed)
        budget -= len(decoding)
        chunks: list[tuple[Sequence, int]] = []
        for s in self._running:
            if budget <= 0:
                break
            if not s.prefilled:
                budget -= self._add_chunk(batch, chunks, s, budget)
        while self._waiting and self._free and budget > 0:
            s = self._waiting.popleft()
            with self._lock:
                self._num_queued -= 1
            s.slot = self._take_slot(s)
            self._running.append(s)
            budget -= self._add_chunk(batch, chunks, s, budget)
        return batch, decoding, chunks

    @staticmethod
    def _add_chunk(
        batch: StepBatch, chunks: list[tuple[Sequence, int]], s: Sequence, budget: int
    ) -> int:
        start = s.num_computed
        n = min(len(s.prompt_ids) - start, budget)
        done = start + n == len(s.prompt_ids)
        batch.prefill.append(PrefillChunk(s.slot, s.prompt_ids[start : start + n], start, done))
        chunks.append((s, n))
        return n

    def _step(self) -> None:
        batch, decoding, chunks = self._schedule()
        if not batch.decode_slots and not batch.prefill:
            return
        t0 = time.perf_counter()
        logits = self.runner.forward(batch)
        rows = list(decoding)
        for s in decoding:
            s.num_computed += 1
        for s, n in chunks:
            s.num_computed += n
            if s.num_computed == len(s.prompt_ids):
                rows.append(s)
        self.stats.prompt_tokens += sum(n for _, n in chunks)
        self.stats.steps += 1
        if not rows:
            return
        tokens, logprobs = self.sampler.sample(
            logits, [s.params for s in rows], [s.generator for s in rows]
        )
        now = time.monotonic()
        out: list[tuple[OutputSink, RequestOutput]] = []
        limit = self.max_model_len
        interval = self.config.stream_interval
        for i, s in enumerate(rows):
            if s.first_token_time is None:
                s.first_token_time = now
            s.append(tokens[i], None if logprobs is None else logprobs[i], self.eos_ids)
            if not s.finished and len(s.prompt_ids) + len(s.output_ids) >= limit:
                s.finish(FINISH_LENGTH)
            if s.finished or (
                s.wants_deltas and (len(s.pending_ids) >= interval or not s.emitted_any)
            ):
                s.emitted_any = True
                out.append((s.sink, s.take_output()))
            if s.finished:
                self.stats.finished += 1
                self._retire(s)
        self.stats.generated_tokens += len(rows)
        self.stats.last_batch_size = len(rows)
        self._running = [s for s in self._running if not s.finished]
        self.stats.running = len(self._running)
        self.stats.waiting = len(self._waiting)
        self._deliver(out)
        if self.step_hook is not None:
            self.step_hook(batch, time.perf_counter() - t0)

    def _fail_running(self, message: str) -> None:
        out = []
        for s in self._running:
            s.finish(FINISH_ERROR)
            o = s.take_output()
            o.error = message
            out.append((s.sink, o))
            self._retire(s)
        self._running = []
        self._deliver(out)

    @staticmethod
    def _deliver(items: list[tuple[OutputSink, RequestOutput]]) -> None:
        by_loop: dict[Any, list[tuple[OutputSink, RequestOutput]]] = {}
        for sink, output in items:
            loop = getattr(sink, "loop", None)
            if loop is None:
                sink.put(output)
            else:
                by_loop.setdefault(loop, []).append((sink, output))
        for loop, group in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver_group, group)
            except RuntimeError:  # the loop is closed: the client is gone
                pass


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0 or a[0] != b[0]:
        return 0
    if a[:n] == b[:n]:
        return n
    lo, hi = 1, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]: halve on slices (C-speed compares)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _deliver_group(group: list[tuple[OutputSink, RequestOutput]]) -> None:
    for sink, output in group:
        sink.put(output)


class CollectingSink:
    """A thread-safe sink that gathers a sequence's deltas into one final output."""

    loop = None

    def __init__(self) -> None:
        self._done = threading.Event()
        self._text: list[str] = []
        self._ids: list[int] = []
        self._logprobs: list = []
        self._final: RequestOutput | None = None

    def put(self, output: RequestOutput) -> None:
        self._text.append(output.text)
        self._ids.extend(output.token_ids)
        if output.logprobs:
            self._logprobs.extend(output.logprobs)
        if output.finished:
            self._final = output
            self._done.set()

    def result(self, timeout: float | None = None) -> RequestOutput:
        if not self._done.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        final = self._final
        assert final is not None
        return RequestOutput(
            request_id=final.request_id,
            text="".join(self._text),
            token_ids=self._ids,
            logprobs=self._logprobs or None,
            finished=True,
            finish_reason=final.finish_reason,
            prompt_tokens=final.prompt_tokens,
            completion_tokens=final.completion_tokens,
            error=final.error,
        )
