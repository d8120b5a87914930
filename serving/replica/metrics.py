"""Prometheus metrics of a replica, under the `cp_serving_` prefix.

Owns the replica's own `CollectorRegistry` (so two replicas in one test process do not
collide): requests by endpoint and status, request latency, time to first token,
inter-token latency, prompt and generated tokens, queue depth, running batch size,
engine step time and batch size, aborts by reason, readiness and model info.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)


class ReplicaMetrics:
    """All metric objects of one replica."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "cp_serving_requests",
            "Requests answered, by endpoint and HTTP status",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "cp_serving_request_latency_seconds",
            "Time from request arrival to the last byte of the response",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "cp_serving_time_to_first_token_seconds",
            "Time from request arrival to its first generated token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "cp_serving_inter_token_latency_seconds",
            "Time between consecutive tokens of one sequence",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "cp_serving_prompt_tokens", "Prompt tokens of finished requests", registry=r
        )
        self.generated_tokens = Counter(
            "cp_serving_generated_tokens", "Tokens generated", registry=r
        )
        self.aborted = Counter(
            "cp_serving_aborted_requests",
            "Requests cancelled before they finished, by reason",
            ["reason"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "cp_serving_queue_depth", "Requests waiting for a batch slot", registry=r
        )
        self.running = Gauge(
            "cp_serving_running_sequences", "Sequences in the running batch", registry=r
        )
        self.in_flight = Gauge(
            "cp_serving_requests_in_flight", "HTTP requests being answered", registry=r
        )
        self.prefix_tokens = Gauge(
            "cp_serving_prefix_reused_tokens",
            "Prompt tokens not prefilled because a free slot held their K/V (since start)",
            registry=r,
        )
        self.prefix_hits = Gauge(
            "cp_serving_prefix_hits",
            "Requests that started from a free slot's cached prefix (since start)",
            registry=r,
        )
        self.ready = Gauge("cp_serving_ready", "1 when warmed up and accepting", registry=r)
        self.step_seconds = Histogram(
            "cp_serving_engine_step_seconds",
            "Duration of one engine step (forward + sampling)",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "cp_serving_engine_batch_size",
            "Sequences that got a token in one engine step",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.info = Gauge(
            "cp_serving_model_info",
            "The served model (value is always 1)",
            ["model", "runner", "quantization", "device"],
            registry=r,
        )

    def bind(
        self,
        queue_depth: Callable[[], float],
        running: Callable[[], float],
        prefix_tokens: Callable[[], float] = lambda: 0.0,
        prefix_hits: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.queue_depth.set_function(queue_depth)
        self.running.set_function(running)
        self.prefix_tokens.set_function(prefix_tokens)
        self.prefix_hits.set_function(prefix_hits)

    def render(self) -> bytes:
        return generate_latest(self.registry)
