"""The replica's shared state: engine, readiness, drain, auth and the output sinks.

Owns `ReplicaState` (what the HTTP handlers, the loader thread and the signal handler
share) and the two asyncio-side sinks the engine thread delivers to: `CollectSink`
(non-streaming: accumulates a choice and resolves a future once) and `StreamSink`
(streaming: forwards each delta to the response's queue). Both record time to first
token and inter-token latency as outputs arrive.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from serving.engine import Engine, LoadReport, RequestOutput
from serving.replica.metrics import ReplicaMetrics
from serving.replica.openai_format import TokenText


@dataclass
class ReplicaState:
    """Everything the replica's handlers share."""

    served_model_name: str
    api_key: str | None
    request_timeout: float
    drain_timeout: float
    metrics: ReplicaMetrics = field(default_factory=ReplicaMetrics)
    engine: Engine | None = None
    report: LoadReport | None = None
    ready: bool = False
    draining: bool = False
    load_error: str | None = None
    in_flight: int = 0
    created: int = field(default_factory=lambda: int(time.time()))
    text_of: TokenText | None = None
    exit_code: int = 0
    max_body_bytes: int = 4 * 1024 * 1024
    #: Tokenizing and chat templates run here, one at a time, never on the event loop.
    prepare_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")
    )

    def attach(self, engine: Engine, report: LoadReport) -> None:
        self.engine = engine
        self.report = report
        self.text_of = TokenText(engine.tokenizer)
        self.metrics.bind(
            lambda: engine.num_queued,
            lambda: engine.num_running,
            lambda: engine.stats.prefix_tokens_reused,
            lambda: engine.stats.prefix_hits,
        )
        self.metrics.info.labels(
            self.served_model_name, report.runner, report.quantization, report.device
        ).set(1)

        def on_step(batch: Any, seconds: float) -> None:
            self.metrics.step_seconds.observe(seconds)
            self.metrics.batch_size.observe(batch.num_logit_rows)

        engine.step_hook = on_step

    def begin(self) -> None:
        self.in_flight += 1
        self.metrics.in_flight.inc()

    def end(self) -> None:
        self.in_flight -= 1
        self.metrics.in_flight.dec()


class _TimingSink:
    __slots__ = ("_last", "_metrics", "_t0", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, metrics: ReplicaMetrics, t0: float):
        self.loop = loop
        self._metrics = metrics
        self._t0 = t0
        self._last: float | None = None

    def _time(self, out: RequestOutput) -> None:
        n = len(out.token_ids)
        if not n:
            return
        now = time.monotonic()
        if self._last is None:
            self._metrics.ttft.observe(now - self._t0)
        else:
            self._metrics.itl.observe((now - self._last) / n)
        self._last = now
        self._metrics.generated_tokens.inc(n)


class CollectSink(_TimingSink):
    """Gathers one choice; `future` resolves when it finishes.

    It asks the engine for the final output only (`wants_deltas = False`), so a
    non-streaming request wakes the event loop once, not once per token; time to first
    token and the mean inter-token latency come from the engine's timestamps.
    """

    __slots__ = ("final", "future", "ids", "logprobs", "request_id", "text")
    wants_deltas = False

    def __init__(self, loop: asyncio.AbstractEventLoop, metrics: ReplicaMetrics, t0: float):
        super().__init__(loop, metrics, t0)
        self.future: asyncio.Future[CollectSink] = loop.create_future()
        self.text: list[str] = []
        self.ids: list[int] = []
        self.logprobs: list = []
        self.final: RequestOutput | None = None
        self.request_id = ""

    def put(self, out: RequestOutput) -> None:
        n = len(out.token_ids)
        if out.finished and n and out.first_token_delay is not None:
            metrics = self._metrics
            metrics.ttft.observe(out.first_token_delay)
            if n > 1:
                elapsed = time.monotonic() - self._t0 - out.first_token_delay
                metrics.itl.observe(max(0.0, elapsed) / (n - 1))
            metrics.generated_tokens.inc(n)
        elif n:
            self._time(out)
        if out.text:
            self.text.append(out.text)
        self.ids.extend(out.token_ids)
        if out.logprobs:
            self.logprobs.extend(out.logprobs)
        if out.finished:
            self.final = out
            if not self.future.done():
                self.future.set_result(self)


class StreamSink(_TimingSink):
    """Forwards one choice's deltas to the response queue as (index, output)."""

    __slots__ = ("finished", "index", "queue", "request_id")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        metrics: ReplicaMetrics,
        t0: float,
        queue: asyncio.Queue,
        index: int,
    ):
        super().__init__(loop, metrics, t0)
        self.queue = queue
        self.index = index
        self.finished = False
        self.request_id = ""

    def put(self, out: RequestOutput) -> None:
        self._time(out)
        if out.finished:
            self.finished = True
        self.queue.put_nowait((self.index, out))
