"""A deployment's serving figures, from the metrics its replicas already export.

Each controller pass scrapes ``/metrics`` of every ready replica (concurrently, with a
short timeout), takes the difference from the replica's previous scrape (a restarted
replica's counters start again from zero), and adds those up per deployment: totals since
it was created (for ``/metrics``), live rates over the last pass (for its page and the
autoscaler), and one ``DeploymentSample`` per ``CP_TELEMETRY_HISTORY_STEP`` seconds (its
charts). The state between passes lives in the cache (Redis), so any control worker can
run the next pass.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache
from prometheus_client.parser import text_string_to_metric_families

from controlplane import degraded, realtime
from serving.models import DeploymentSample

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
SCRAPE_TIMEOUT = 1.0
COUNTERS = {
    "cp_serving_generated_tokens_total": "tokens",
    "cp_serving_prompt_tokens_total": "prompt_tokens",
    "cp_serving_aborted_requests_total": "aborted",
}
HISTOGRAMS = {
    "cp_serving_request_latency_seconds": "latency",
    "cp_serving_time_to_first_token_seconds": "ttft",
    "cp_serving_inter_token_latency_seconds": "itl",
    "cp_serving_engine_batch_size": "batch",
}
GAUGES = {
    "cp_serving_queue_depth": "queue",
    "cp_serving_running_sequences": "running",
    "cp_serving_requests_in_flight": "in_flight",
}


@dataclass
class Hist:
    bounds: list[float] = field(default_factory=list)  # upper bounds, +Inf last
    counts: list[float] = field(default_factory=list)  # cumulative, as exported
    total: float = 0.0
    count: float = 0.0

    def minus(self, older: Hist | None) -> Hist:
        if older is None or older.bounds != self.bounds or older.count > self.count:
            return Hist(list(self.bounds), list(self.counts), self.total, self.count)
        return Hist(
            list(self.bounds),
            [a - b for a, b in zip(self.counts, older.counts, strict=True)],
            self.total - older.total,
            self.count - older.count,
        )

    def plus(self, other: Hist) -> Hist:
        if not self.bounds:
            return Hist(list(other.bounds), list(other.counts), other.total, other.count)
        if other.bounds != self.bounds:
            return self
        return Hist(
            self.bounds,
            [a + b for a, b in zip(self.counts, other.counts, strict=True)],
            self.total + other.total,
            self.count + other.count,
        )

    def quantile(self, q: float) -> float | None:
        """Estimated like PromQL's histogram_quantile: linear within the bucket."""
        if self.count <= 0 or not self.counts:
            return None
        rank = q * self.counts[-1]
        lower, below = 0.0, 0.0
        for bound, cumulative in zip(self.bounds, self.counts, strict=True):
            if cumulative >= rank:
                if math.isinf(bound):
                    return lower
                inside = cumulative - below
                share = (rank - below) / inside if inside > 0 else 1.0
                return lower + (bound - lower) * share
            lower, below = bound, cumulative
        return lower


@dataclass
class Sample:
    time: float
    counters: dict[str, float] = field(default_factory=dict)
    hists: dict[str, Hist] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)


def parse(text: str, now: float) -> Sample:
    """A replica's exposition as a ``Sample`` (requests are counted per status)."""
    sample = Sample(time=now)
    for family in text_string_to_metric_families(text):
        if family.name == "cp_serving_requests":
            for s in family.samples:
                if s.name.endswith("_total"):
                    key = f"status_{s.labels.get('status', '')}"
                    sample.counters[key] = sample.counters.get(key, 0.0) + s.value
            continue
        hist_key = HISTOGRAMS.get(family.name)
        if hist_key:
            buckets: dict[float, float] = {}
            hist = Hist()
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    bound = float(s.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + s.value
                elif s.name.endswith("_sum"):
                    hist.total += s.value
                elif s.name.endswith("_count"):
                    hist.count += s.value
            hist.bounds = sorted(buckets)
            hist.counts = [buckets[b] for b in hist.bounds]
            sample.hists[hist_key] = hist
            continue
        for s in family.samples:
            if s.name in COUNTERS:
                sample.counters[COUNTERS[s.name]] = (
                    sample.counters.get(COUNTERS[s.name], 0.0) + s.value
                )
            elif s.name in GAUGES:
                sample.gauges[GAUGES[s.name]] = s.value
    return sample


async def _scrape(client: httpx.AsyncClient, key: Any, url: str) -> tuple[Any, Sample | None]:
    try:
        response = await client.get(f"{url}/metrics")
        if response.status_code != 200:
            return key, None
        return key, parse(response.text, time.time())
    except (httpx.HTTPError, ValueError, KeyError):
        return key, None


def scrape(targets: dict[Any, str]) -> dict[Any, Sample]:
    """``key -> url`` of replicas to ``key -> Sample`` for those that answered."""
    if not targets:
        return {}

    async def run() -> list[tuple[Any, Sample | None]]:
        async with httpx.AsyncClient(timeout=SCRAPE_TIMEOUT) as client:
            return await asyncio.gather(*(_scrape(client, k, u) for k, u in targets.items()))

    return {k: s for k, s in asyncio.run(run()) if s is not None}


def _minus(new: Sample, old: Sample | None) -> Sample:
    """What happened between two scrapes of one replica (all of ``new`` after a reset)."""
    reset = old is None or any(new.counters.get(k, 0.0) < v for k, v in old.counters.items())
    base = None if reset else old
    delta = Sample(time=new.time, gauges=dict(new.gauges))
    for key, value in new.counters.items():
        delta.counters[key] = value - (base.counters.get(key, 0.0) if base else 0.0)
    for key, hist in new.hists.items():
        delta.hists[key] = hist.minus(base.hists.get(key) if base else None)
    return delta


def _add(into: Sample, other: Sample) -> None:
    for key, value in other.counters.items():
        into.counters[key] = into.counters.get(key, 0.0) + value
    for key, hist in other.hists.items():
        into.hists[key] = into.hists.get(key, Hist()).plus(hist)
    for key, value in other.gauges.items():
        into.gauges[key] = into.gauges.get(key, 0.0) + value


def _requests(sample: Sample, prefix: str = "") -> float:
    return sum(v for k, v in sample.counters.items() if k.startswith(f"status_{prefix}"))


def figures(delta: Sample, seconds: float) -> dict[str, Any]:
    """Rates and percentiles of what happened over ``seconds``."""
    seconds = max(seconds, 1e-6)
    out: dict[str, Any] = {
        "requests_per_s": _requests(delta) / seconds,
        "errors_per_s": _requests(delta, "5") / seconds,
        "rejected_per_s": _requests(delta, "429") / seconds,
        "tokens_per_s": delta.counters.get("tokens", 0.0) / seconds,
        "requests": _requests(delta),
        "tokens": delta.counters.get("tokens", 0.0),
        "queue": delta.gauges.get("queue", 0.0),
        "in_flight": delta.gauges.get("in_flight", 0.0),
        "running": delta.gauges.get("running", 0.0),
    }
    for key in ("latency", "ttft", "itl"):
        hist = delta.hists.get(key)
        out[f"{key}_p50"] = hist.quantile(0.5) if hist else None
        out[f"{key}_p99"] = hist.quantile(0.99) if hist else None
    batch = delta.hists.get("batch")
    out["batch_size"] = batch.total / batch.count if batch and batch.count > 0 else None
    return out


def _key(deployment_id: int) -> str:
    return f"serving:stats:{deployment_id}"


def update(
    deployment_id: int, samples: dict[int, Sample], ready: int, now: float
) -> dict[str, Any]:
    """Fold this pass's scrapes (replica id -> Sample) into the deployment's figures;
    returns the live ones (also cached for the API, ``/metrics`` and the page)."""
    state = cache.get(_key(deployment_id)) or {}
    previous: dict[int, Sample] = state.get("prev", {})
    delta = Sample(time=now)
    for replica_id, sample in samples.items():
        _add(delta, _minus(sample, previous.get(replica_id)))
    totals: Sample = state.get("totals") or Sample(time=now)
    _add(totals, Sample(time=now, counters=delta.counters, hists=delta.hists))
    window: Sample = state.get("window") or Sample(time=now)
    _add(window, Sample(time=now, counters=delta.counters, hists=delta.hists))
    last = state.get("time", now)
    live = figures(delta, now - last if now > last else 1.0)
    live.update(ready=ready, time=now, tokens_total=totals.counters.get("tokens", 0.0))
    step = settings.TELEMETRY_HISTORY_STEP
    if now - window.time >= step:
        values = figures(window, now - window.time)
        values.update(queue=live["queue"], in_flight=live["in_flight"])
        DeploymentSample.objects.create(
            deployment_id=deployment_id,
            time=datetime.fromtimestamp(now, UTC),
            replicas=ready,
            values={k: v for k, v in values.items() if v is not None},
        )
        window = Sample(time=now)
    cache.set(
        _key(deployment_id),
        {
            "prev": dict(samples),
            "totals": totals,
            "window": window,
            "time": now,
            "live": live,
        },
        timeout=24 * 3600,
    )
    return live


def cached(deployment_id: int) -> dict[str, Any]:
    """The latest live figures and totals of a deployment ({} before the first pass, or
    while Redis is unreachable: the page and API show the rest)."""
    state = degraded.best_effort(lambda: cache.get(_key(deployment_id))) or {}
    totals: Sample | None = state.get("totals")
    out = dict(state.get("live") or {})
    if totals is not None:
        out["totals"] = {
            "requests": {k[7:]: v for k, v in totals.counters.items() if k.startswith("status_")},
            "tokens": totals.counters.get("tokens", 0.0),
            "prompt_tokens": totals.counters.get("prompt_tokens", 0.0),
            "hists": {k: (h.bounds, h.counts, h.total, h.count) for k, h in totals.hists.items()},
        }
    return out


def group(deployment_id: int) -> str:
    return f"deployment.{deployment_id}"


def broadcast(deployment_id: int, payload: dict[str, Any]) -> None:
    """Send to the deployment's page(s) now; a realtime hiccup never fails the caller."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        realtime.group_send(
            layer,
            [group(deployment_id)],
            {"type": "deployment.event", "event": {"v": SCHEMA_VERSION, **payload}},
        )
    except Exception:
        log.warning("could not broadcast to deployment %s", deployment_id, exc_info=True)
