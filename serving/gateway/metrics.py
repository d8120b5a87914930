"""The gateway's own Prometheus metrics (``cp_gateway_*``): what it answered per
deployment, how long that took, time to the first streamed byte, retries on another
replica, and replicas it took out. The replicas' engine figures come from the control
plane's ``/metrics`` (``cp_deployment_*``), aggregated by the controller."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "cp_gateway_requests",
            "Requests answered by the gateway, by deployment and HTTP status",
            ["deployment", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "cp_gateway_request_latency_seconds",
            "From the request's arrival at the gateway to the last byte of its response",
            ["deployment"],
            buckets=BUCKETS,
            registry=r,
        )
        self.ttfb = Histogram(
            "cp_gateway_time_to_first_byte_seconds",
            "From arrival to the first byte of a streamed response (the first token)",
            ["deployment"],
            buckets=BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "cp_gateway_retries",
            "Requests sent again to another replica, by why",
            ["deployment", "reason"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
