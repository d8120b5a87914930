"""Prefix reuse in the engine, and the gateway's prefix affinity, on a shared-prefix load.

    .venv/bin/python bench/serving_affinity.py [--prefixes 24] [--requests 240]

Two real replicas (``python -m serving.replica``, the reference model, 1 thread each,
max batch 8) and a closed-loop client of ``--concurrency`` requests in flight. Every request
is one of ``--prefixes`` "system prompts" of ``--prefix-tokens`` tokens followed by a short
question of its own (greedy, ``--max-tokens``): the load of a multi-tenant chat service,
where the prompt is mostly prefill. The replica for each request is chosen by the
gateway's own code (``serving.gateway.router.Router.pick``, its begin/end counts) in the
client process, so what differs between rows is only the policy:

- ``no reuse, least outstanding``: the replicas started with ``--prefix-reuse-min 0``
  (the engine before prefix reuse);
- ``reuse, least outstanding``: the default engine, the default routing;
- ``reuse, prefix affinity``: the same replicas, ``prefix_affinity`` on.

Between rows every slot of both replicas is overwritten (``2 x max batch`` unrelated
prompts), so no row starts warm. Printed: requests/s, p50/p99 latency, the share of
prompt tokens the replicas did not prefill (from their ``/metrics``), and the ratios
against ``reuse, least outstanding`` in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.serving_common import (
    ROOT,
    free_port,
    machine_load,
    make_prompts,
    print_table,
    reference_model,
    start_server,
)

MODEL_NAME = "ref"


def replica(name: str, model: Path, reuse: int, batch: int) -> object:
    port = free_port()
    cmd = [
        str(ROOT / ".venv/bin/python"), "-m", "serving.replica", "--model", str(model),
        "--served-model-name", MODEL_NAME, "--port", str(port), "--device", "cpu",
        "--threads", "1", "--max-batch-size", str(batch), "--max-model-len", "1024",
        "--prefix-reuse-min", str(reuse), "--log-level", "warning",
    ]  # fmt: skip
    return start_server(name, cmd, f"http://127.0.0.1:{port}", "/health")


def scrape(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=5).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        for name in ("cp_serving_prefix_reused_tokens", "cp_serving_prompt_tokens_total"):
            if line.startswith(name + " "):
                out[name] = float(line.split()[1])
    return out


async def run(
    servers: list, affinity: bool, load: list[str], args: argparse.Namespace
) -> dict[str, float]:
    import os

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    django.setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from serving.deployments.routing import Endpoint, Route
    from serving.gateway.router import Router, affinity_key

    route = Route(
        deployment_id=1, project_id=1, project="bench", name=MODEL_NAME, state="READY",
        revision_id=1, canary_id=None, canary_percent=0, request_timeout=600,
        scale_to_zero=False, rate_limit=None, prefix_affinity=affinity,
    )  # fmt: skip
    route.endpoints = [Endpoint(i, i, s.url, "", 1) for i, s in enumerate(servers, start=1)]
    router = Router()
    before = [scrape(s.url) for s in servers]
    latencies: list[float] = []
    queue = list(load)
    async with httpx.AsyncClient(timeout=600) as client:

        async def worker() -> None:
            while queue:
                prompt = queue.pop()
                body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": args.max_tokens,
                        "temperature": 0.0}  # fmt: skip
                endpoint = router.pick(route, set(), affinity_key(body))
                router.begin(endpoint)
                t0 = time.perf_counter()
                try:
                    response = await client.post(endpoint.url + "/v1/completions", json=body)
                    response.raise_for_status()
                finally:
                    router.end(endpoint)
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        wall = time.perf_counter() - t0
    after = [scrape(s.url) for s in servers]
    reused = sum(
        a.get("cp_serving_prefix_reused_tokens", 0) - b.get("cp_serving_prefix_reused_tokens", 0)
        for a, b in zip(after, before, strict=True)
    )
    prompt = sum(
        a["cp_serving_prompt_tokens_total"] - b["cp_serving_prompt_tokens_total"]
        for a, b in zip(after, before, strict=True)
    )
    latencies.sort()
    return {
        "rps": round(len(load) / wall, 2),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000, 1),
        "reused": round(reused / prompt, 3) if prompt else 0.0,
    }


def flush(servers: list, prompts: list[str]) -> None:
    """Overwrite every slot of every replica with unrelated prompts."""

    async def go() -> None:
        async with httpx.AsyncClient(timeout=600) as client:
            for server in servers:
                await asyncio.gather(
                    *(
                        client.post(
                            server.url + "/v1/completions",
                            json={"model": MODEL_NAME, "prompt": p, "max_tokens": 1},
                        )
                        for p in prompts
                    )
                )

    asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefixes", type=int, default=24)
    parser.add_argument("--prefix-tokens", type=int, default=384)
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    model = reference_model()
    systems = make_prompts(model, args.prefixes, length=args.prefix_tokens, seed=1)
    questions = make_prompts(model, args.requests, length=12, seed=2)
    rng = random.Random(3)
    load = [rng.choice(systems) + questions[i] for i in range(args.requests)]
    junk = make_prompts(model, 2 * args.batch, length=args.prefix_tokens, seed=4)
    rows = []
    for reuse, policies in ((0, [False]), (16, [False, True])):
        servers = [replica(f"affinity-r{i}-{reuse}", model, reuse, args.batch) for i in (1, 2)]
        try:
            for affinity in policies:
                flush(servers, junk)
                result = asyncio.run(run(servers, affinity, load, args))
                label = ("reuse" if reuse else "no reuse") + (
                    ", prefix affinity" if affinity else ", least outstanding"
                )
                rows.append({"policy": label, **result, "load1": machine_load()["load1"]})
                print(rows[-1], flush=True)
        finally:
            for server in servers:
                server.stop()
    base = rows[1]
    for row in rows:
        row["rps_x"] = round(row["rps"] / base["rps"], 2)
        row["p50_x"] = round(row["p50_ms"] / base["p50_ms"], 2)
    print()
    print(
        f"{args.requests} requests, {args.prefixes} prefixes of {args.prefix_tokens} tokens + "
        f"12, {args.max_tokens} generated, {args.concurrency} in flight, 2 replicas x batch "
        f"{args.batch}"
    )
    print_table(rows, ["policy", "rps", "p50_ms", "p99_ms", "reused", "rps_x", "p50_x", "load1"])


if __name__ == "__main__":
    main()
