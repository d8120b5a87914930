"""The OpenAI gateway against its own replica and LiteLLM's proxy, and its balancing policy.

    .venv/bin/python bench/serving_gateway.py [--quick] [--repeat 3] [--peers litellm]

Starts the stack (``tests.e2e.stack.Stack``, two worker hosts of 2 CPU slots), registers
the test-size tiny Llama (``build_tiny_llama(dir, "test", train_steps=40)``) through the
API and measures, with one async client (httpx, one connection per request in flight; a
fixed prompt, greedy, 32 tokens):

1. overhead: one replica (a deployment of ``replicas=1``, max batch 64) direct vs through
   the gateway (``/v1`` of the stack's web server) vs LiteLLM's proxy (its own venv,
   var/bench-venvs/litellm, ``openai/<name>`` at the replica's endpoint): tokens/s and
   p50/p99 latency at 64 and 8 in flight, non-streaming and streaming, and one request
   at a time of ``max_tokens=1`` where the added latency shows most. Ratios are against
   direct in the same repeat (targets: gateway >= 0.95x tokens/s, < 2 ms added p50);
2. balancing: a deployment of 2 replicas, one made slower by throttling it (SIGSTOP /
   SIGCONT: it runs ``--slow-duty`` of every 20 ms, as a cgroup CPU quota throttles; a
   busy loop pinned to its CPU slowed it only ~10% on 2 cores, and the client and the
   gateway then crowded the other replica's CPU), behind two gateways started alone
   (``python -m serving.gateway``, the same replicas) that differ only in
   ``CP_GATEWAY_BALANCE`` (least_outstanding, round_robin): 16 clients back to back, and
   Poisson arrivals at ``--lb-rate`` of the better policy's closed-loop requests/s (the
   same arrival times for both); p50/p99 and the share of requests the slow replica got.
   RR/LOR p99 > 1 means least-outstanding is better.

Every run is repeated (targets in a rotating order) and the median kept; a run stops
taking new requests after ``--run-seconds``. The load average is printed with each row
(the machine is shared). ``--quick``: fewer requests, one repeat (3-5 minutes); the full
run takes 8-13 minutes on the 2-core VM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import random
import ssl
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.serving_common import (
    ROOT,
    Server,
    free_port,
    in_thread,
    machine_load,
    print_table,
    start_server,
)
from tests.e2e.stack import Stack

PROMPT = "The quick brown fox"
LITELLM_VENV = ROOT / "var" / "bench-venvs" / "litellm"
MASTER_KEY = "sk-bench"


# --- the load generator ---------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


#: One TLS context for every client: httpx builds one per client otherwise (~60 ms of CPU
#: here), which stalled the open-loop client whenever it had to add a connection.
_TLS: ssl.SSLContext | None = None


def new_client(base: str, key: str) -> httpx.AsyncClient:
    """One connection per client: a shared httpx pool (httpcore 1.0) spends O(connections^2)
    per request assigning connections, and at 64 in flight it made the client, not the
    server, the limit (~1,000 vs ~6,000 tok/s on one replica)."""
    global _TLS
    _TLS = _TLS or ssl.create_default_context()
    return httpx.AsyncClient(
        base_url=base,
        headers={"Authorization": f"Bearer {key}"},
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        timeout=httpx.Timeout(300.0),
        verify=_TLS,
    )


async def _one(client: httpx.AsyncClient, body: dict, stream: bool) -> tuple[int, str]:
    """One completion: (completion tokens, X-CP-Replica or '')."""
    if not stream:
        r = await client.post("/completions", json=body)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"], r.headers.get("x-cp-replica", "")
    tokens = chunks = 0
    async with client.stream("POST", "/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("error"):
                raise ValueError(f"stream error: {chunk['error']}")
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk.get("choices") and chunk["choices"][0].get("text"):
                chunks += 1
    return tokens or chunks, r.headers.get("x-cp-replica", "")


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.replicas: Counter = Counter()
        self.tokens = self.errors = 0
        self.first_error = ""

    async def send(self, client, body: dict, stream: bool, since: float | None = None) -> None:
        t0 = time.perf_counter() if since is None else since
        try:
            n, replica = await _one(client, body, stream)
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            self.errors += 1
            self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"[:200]
            return
        self.latencies.append(time.perf_counter() - t0)
        self.tokens += n
        self.replicas[replica] += 1

    def summary(self, wall: float) -> dict:
        return {
            "tok_s": self.tokens / wall,
            "req_s": len(self.latencies) / wall,
            "p50_ms": pct(self.latencies, 0.5) * 1000,
            "p99_ms": pct(self.latencies, 0.99) * 1000,
            "mean_ms": statistics.fmean(self.latencies) * 1000 if self.latencies else 0.0,
            "tokens_per_req": self.tokens / max(1, len(self.latencies)),
            "errors": self.errors,
            "first_error": self.first_error,
            "replicas": dict(self.replicas),
            **machine_load(),
        }


def body_of(target: dict, stream: bool, max_tokens: int) -> dict:
    body = {"model": target["model"], "prompt": PROMPT, "max_tokens": max_tokens}
    body["temperature"] = 0
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


async def _closed(
    target: dict, requests: int, concurrency: int, stream: bool, max_tokens: int, cap: float
) -> dict:
    """`concurrency` clients back to back until `requests` are sent or `cap` s passed."""
    body = body_of(target, stream, max_tokens)
    clients = [new_client(target["base"], target["key"]) for _ in range(concurrency)]
    tally = Tally()
    try:
        warm = Tally()  # open every connection first (not timed)
        await asyncio.gather(*(warm.send(c, body, stream) for c in clients))
        left = requests
        t0 = time.perf_counter()

        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal left
            while left > 0 and time.perf_counter() - t0 < cap:
                left -= 1
                await tally.send(client, body, stream)

        await asyncio.gather(*(worker(c) for c in clients))
        wall = time.perf_counter() - t0
    finally:
        for client in clients:
            await client.aclose()
    return tally.summary(wall)


async def _open(target: dict, rate: float, seconds: float, max_tokens: int, seed: int) -> dict:
    """Poisson arrivals at `rate` per second for `seconds` (the same ones for a seed);
    latency from each arrival's scheduled time."""
    rng = random.Random(seed)
    body = body_of(target, False, max_tokens)
    free = [new_client(target["base"], target["key"]) for _ in range(128)]
    every = list(free)
    tally = Tally()
    warm = Tally()
    await asyncio.gather(*(warm.send(c, body, False) for c in free[:16]))

    async def fire(at: float) -> None:
        client = free.pop() if free else new_client(target["base"], target["key"])
        if client not in every:
            every.append(client)
        try:
            await tally.send(client, body, False, since=at)
        finally:
            free.append(client)

    tasks = []
    t0 = at = time.perf_counter()
    try:
        while True:
            at += rng.expovariate(rate)
            if at - t0 > seconds:
                break
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(fire(at)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    finally:
        for client in every:
            await client.aclose()
    out = tally.summary(wall)
    out["sent"] = len(tasks)
    return out


def run_load(target: dict, requests: int, concurrency: int, stream: bool, max_tokens: int,
             cap: float = 1e9) -> dict:  # fmt: skip
    return asyncio.run(_closed(target, requests, concurrency, stream, max_tokens, cap))


def run_open(target: dict, rate: float, seconds: float, max_tokens: int, seed: int) -> dict:
    return asyncio.run(_open(target, rate, seconds, max_tokens, seed))


def median_run(runs: list[dict], key: str = "tok_s") -> dict:
    """The median run (by `key`), with the spread of tokens/s and the errors of all."""
    ordered = sorted(runs, key=lambda r: r[key])
    out = dict(ordered[len(ordered) // 2])
    out["errors"] = sum(r["errors"] for r in runs)
    out["first_error"] = next((r["first_error"] for r in runs if r["first_error"]), "")
    spread = sorted(r["tok_s"] for r in runs)
    out["range"] = f"{spread[0]:.0f}-{spread[-1]:.0f}"
    return out


# --- the stack ------------------------------------------------------------------------


def tar_of(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in sorted(directory.iterdir()):
            archive.add(path, arcname=path.name)
    return buffer.getvalue()


def wait_for(check, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def start_stack(model_dir: Path) -> Stack:
    stack = Stack(
        fake_gpus=0,
        extra_env={"CP_WORKER_CPU_SLOTS": "0", "CP_LOG_LEVEL": "warning"},
    )
    stack.start()
    stack.wait_ready()
    for name in ("w-a", "w-b"):
        stack.start_worker(name)
    stack.token = stack.manage("create_token", "admin", "--name", "bench").stdout.strip()
    stack.api = httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {stack.token}"}, timeout=60
    )
    wait_for(
        lambda: (
            {
                w["name"]
                for w in stack.api.get("/api/v1/workers/").json()["results"]
                if w["status"] == "online"
            }
            >= {"w-a", "w-b"}
        ),
        60,
        "workers online",
    )
    model = stack.api.post("/api/v1/models/", json={"name": "tiny", "project": "default"})
    model.raise_for_status()
    stack.api.post(
        f"/api/v1/models/{model.json()['id']}/versions/",
        files={"archive": ("tiny.tar", tar_of(model_dir), "application/x-tar")},
    ).raise_for_status()
    return stack


def deploy(stack: Stack, name: str, replicas: int, max_batch_size: int) -> dict:
    created = stack.api.post(
        "/api/v1/deployments/",
        json={
            "project": "default",
            "model": "tiny",
            "name": name,
            "replicas": replicas,
            "cpus_per_replica": 1,
            "max_batch_size": max_batch_size,
        },
    )
    if created.status_code != 201:
        raise RuntimeError(f"deploy {name}: {created.status_code} {created.text}")
    dep_id = created.json()["id"]

    def ready():
        dep = stack.api.get(f"/api/v1/deployments/{dep_id}/").json()
        live = dep["replica_set"]
        if (
            dep["state"] == "READY"
            and len(live) == replicas
            and all(r["state"] == "READY" and r["endpoint"] for r in live)
        ):
            return dep
        return None

    return wait_for(ready, 300, f"deployment {name} to be ready")


def undeploy(stack: Stack, dep: dict) -> None:
    stack.api.delete(f"/api/v1/deployments/{dep['id']}/")
    wait_for(
        lambda: stack.api.get(f"/api/v1/deployments/{dep['id']}/").status_code == 404,
        120,
        f"deployment {dep['name']} to be gone",
    )


def service_key(stack: Stack, job_id: int) -> str:
    code = (
        "from jobs.models import AttemptNode; print(AttemptNode.objects.filter("
        f"attempt__job_id={int(job_id)}, state='RUNNING')"
        ".values_list('service_key', flat=True).first())"
    )
    out = stack.manage("shell", "-c", code)
    key = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    if not key or key == "None":
        raise RuntimeError(f"no service key for job {job_id}: {out.stderr[-500:]}")
    return key


def replica_process(name: str, endpoint: str) -> psutil.Process:
    """The replica process of deployment ``name`` listening on the endpoint's port."""
    port = urlparse(endpoint).port
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "serving.replica" not in cmd or name not in cmd or "workers.guard" in cmd:
            continue
        try:
            if any(c.laddr.port == port for c in proc.net_connections("tcp")):
                return proc
        except psutil.Error:
            continue
    raise RuntimeError(f"no replica process of {name} listens on {endpoint}")


#: Runs in its own process: the replica runs `run` s of every `period` s (SIGSTOP/SIGCONT),
#: as a cgroup CPU quota would throttle it; SIGTERM lets it go on for good.
THROTTLE = """
import os, signal, sys, time
pid, run, period = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
def release(*_):
    os.kill(pid, signal.SIGCONT)
    sys.exit(0)
signal.signal(signal.SIGTERM, release)
while True:
    os.kill(pid, signal.SIGSTOP)
    time.sleep(period - run)
    os.kill(pid, signal.SIGCONT)
    time.sleep(run)
"""


def throttle(proc: psutil.Process, duty: float, period: float = 0.02) -> subprocess.Popen:
    cmd = [sys.executable, "-c", THROTTLE, str(proc.pid), str(duty * period), str(period)]
    return subprocess.Popen(cmd)


def start_gateway(stack: Stack, balance: str) -> Server:
    """``python -m serving.gateway`` on the stack's settings with ``balance``."""
    port = free_port()
    env = {**stack.env, "CP_GATEWAY_BALANCE": balance}
    cmd = [sys.executable, "-m", "serving.gateway", "--port", str(port)]
    return start_server(
        f"gateway-{balance}", cmd, f"http://127.0.0.1:{port}", "/health", timeout=120, env=env
    )


def start_litellm(name: str, endpoint: str, key: str) -> Server:
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        raise RuntimeError(
            f"{python} is missing: python3 -m venv {LITELLM_VENV} && "
            f"{LITELLM_VENV}/bin/pip install 'litellm[proxy]'"
        )
    port = free_port()
    cmd = [
        str(python), str(ROOT / "bench" / "peers" / "litellm_proxy.py"),
        "--name", name, "--api-base", endpoint + "/v1", "--api-key", key,
        "--port", str(port), "--master-key", MASTER_KEY,
    ]  # fmt: skip
    return start_server(
        "litellm", cmd, f"http://127.0.0.1:{port}", "/health/liveliness", timeout=180
    )


def litellm_version() -> str:
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        return "?"
    out = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() or "?"


# --- the measurements -----------------------------------------------------------------


def overhead(targets: dict[str, dict], args: argparse.Namespace) -> list[dict]:
    """Part 1: every target at each load; ratios against direct in the same repeat."""
    loads = [
        (c, stream, args.requests if c >= 32 else args.requests_low, args.max_tokens)
        for c in args.concurrency
        for stream in (False, True)
    ]
    loads.append((1, False, args.sequential, 1))
    rows = []
    names = list(targets)
    for c, stream, requests, max_tokens in loads:
        runs: dict[str, list[dict]] = {n: [] for n in names}
        ratios: dict[str, list[float]] = {n: [] for n in names}
        added: dict[str, list[float]] = {n: [] for n in names}
        for rep in range(args.repeat):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            got = {
                n: run_load(targets[n], requests, c, stream, max_tokens, args.run_seconds)
                for n in order
            }
            for n in names:
                runs[n].append(got[n])
                ratios[n].append(got[n]["tok_s"] / got["direct"]["tok_s"])
                added[n].append(got[n]["p50_ms"] - got["direct"]["p50_ms"])
        for n in names:
            res = median_run(runs[n])
            row = {
                "target": n,
                "load": f"c={c}, {'stream' if stream else 'plain'}, {max_tokens} tok",
                "tok_s": round(res["tok_s"]),
                "p50_ms": round(res["p50_ms"], 1),
                "p99_ms": round(res["p99_ms"], 1),
                "x_direct": "" if n == "direct" else f"{statistics.median(ratios[n]):.2f}",
                "+p50_ms": "" if n == "direct" else f"{statistics.median(added[n]):+.1f}",
                "errors": res["errors"],
                "tok/req": round(res["tokens_per_req"], 1),
                "range": res["range"],
                "load1": res["load1"],
            }
            rows.append(row)
            print(json.dumps({**row, "first_error": res["first_error"]}), flush=True)
    return rows


def balancing(stack: Stack, args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Part 2: 2 replicas, one throttled; least-outstanding vs round robin, closed loop at
    `--lb-concurrency` and open loop (Poisson) at `--lb-rate` of the measured capacity."""
    dep = deploy(stack, "pair", replicas=2, max_batch_size=args.lb_batch)
    slow, fast = dep["replica_set"][0], dep["replica_set"][1]
    slow_proc = replica_process("pair", slow["endpoint"])
    throttler = throttle(slow_proc, args.slow_duty)
    gateways: dict[str, Server] = {}
    info: dict = {"slow": f"r{slow['number']}", "fast": f"r{fast['number']}"}
    rows = []
    try:
        # How unequal they are: each replica alone at half the load.
        for label, replica in (("slow", slow), ("fast", fast)):
            target = {
                "base": replica["endpoint"] + "/v1",
                "key": service_key(stack, replica["job"]),
                "model": "pair",
            }
            res = run_load(target, args.lb_requests // 2, args.lb_concurrency // 2, False, 32)
            info[f"{label}_tok_s"] = round(res["tok_s"])
            info[f"{label}_p50_ms"] = round(res["p50_ms"], 1)
        print(json.dumps({"replicas alone": info}), flush=True)
        for balance in ("least_outstanding", "round_robin"):
            gateways[balance] = start_gateway(stack, balance)
        targets = {
            b: {"base": g.url + "/v1", "key": stack.token, "model": "pair"}
            for b, g in gateways.items()
        }
        closed: dict[str, list[dict]] = {b: [] for b in gateways}
        for rep in range(args.repeat):
            for b in list(gateways) if rep % 2 == 0 else list(gateways)[::-1]:
                closed[b].append(
                    run_load(targets[b], args.lb_requests, args.lb_concurrency, False, 32)
                )
        # Open loop at a share of the best closed-loop throughput (requests/s).
        capacity = max(median_run(r)["req_s"] for r in closed.values())
        rate = args.lb_rate * capacity
        info["rate"] = round(rate, 1)
        opened: dict[str, list[dict]] = {b: [] for b in gateways}
        for rep in range(args.repeat):
            for b in list(gateways) if rep % 2 == 0 else list(gateways)[::-1]:
                opened[b].append(run_open(targets[b], rate, args.lb_seconds, 32, seed=rep))
        for kind, runs in (("closed", closed), ("open", opened)):
            for balance, results in runs.items():
                res = median_run(results, "p99_ms")
                shares: Counter = Counter()
                for r in results:
                    shares.update(r["replicas"])
                load = (
                    f"c={args.lb_concurrency}"
                    if kind == "closed"
                    else f"{rate:.0f} req/s Poisson ({args.lb_rate:.0%})"
                )
                rows.append(
                    {
                        "policy": balance,
                        "load": load + ", 32 tok",
                        "tok_s": round(res["tok_s"]),
                        "p50_ms": round(res["p50_ms"], 1),
                        "p99_ms": round(res["p99_ms"], 1),
                        "p99_by_run": "/".join(f"{r['p99_ms']:.0f}" for r in results),
                        "slow_share": f"{shares[info['slow']] / (sum(shares.values()) or 1):.2f}",
                        "errors": res["errors"],
                        "load1": res["load1"],
                    }
                )
                print(json.dumps({**rows[-1], "first_error": res["first_error"]}), flush=True)
    finally:
        throttler.terminate()
        throttler.wait()
        with contextlib.suppress(psutil.Error):
            slow_proc.resume()
        for server in gateways.values():
            server.stop()
    return rows, info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer requests, one repeat")
    p.add_argument("--repeat", type=int, help="runs per measurement (default 3; quick 1)")
    p.add_argument("--concurrency", default="64,8", help="in-flight requests of part 1")
    p.add_argument("--requests", type=int, help="requests per run at >= 32 in flight")
    p.add_argument("--requests-low", type=int, help="requests per run below 32 in flight")
    p.add_argument("--run-seconds", type=float, help="no new request after this (per run)")
    p.add_argument("--sequential", type=int, help="max_tokens=1 requests one at a time")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--lb-concurrency", type=int, default=16)
    p.add_argument("--lb-requests", type=int, help="requests per closed-loop run of part 2")
    p.add_argument("--lb-rate", type=float, default=0.5, help="open loop: share of capacity")
    p.add_argument("--lb-seconds", type=float, help="open loop: seconds of arrivals per run")
    p.add_argument("--lb-batch", type=int, default=16, help="max batch of part 2's replicas")
    p.add_argument(
        "--slow-duty", type=float, default=0.5, help="share of time part 2's slow replica runs"
    )
    p.add_argument("--peers", default="litellm", help="'litellm' or '' for none")
    p.add_argument("--skip-balancing", action="store_true")
    p.add_argument("--skip-overhead", action="store_true", help="part 2 only")
    p.add_argument("--json", help="write every row here")
    args = p.parse_args()
    quick = args.quick
    args.repeat = args.repeat or (1 if quick else 3)
    args.requests = args.requests or (128 if quick else 384)
    args.requests_low = args.requests_low or (64 if quick else 160)
    args.run_seconds = args.run_seconds or (8.0 if quick else 15.0)
    args.sequential = args.sequential or (50 if quick else 200)
    args.lb_requests = args.lb_requests or (96 if quick else 320)
    args.lb_seconds = args.lb_seconds or (8.0 if quick else 15.0)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    started = time.monotonic()
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
        platform.processor(),
    )
    print(
        f"{datetime.now().isoformat(timespec='minutes')}; {os.cpu_count()} CPUs, {cpu}; "
        f"load at start {machine_load()}",
        flush=True,
    )
    from serving.engine.tiny import build_tiny_llama

    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    # Off the main thread (see serving_common.in_thread).
    model_dir = in_thread(lambda: build_tiny_llama(tmp / "tiny", "test", train_steps=40))
    stack = start_stack(model_dir)
    peer_note = ""
    litellm: Server | None = None
    lb_rows: list[dict] = []
    info: dict = {}
    try:
        dep = deploy(stack, "solo", replicas=1, max_batch_size=64)
        [replica] = dep["replica_set"]
        key = service_key(stack, replica["job"])
        targets = {
            "direct": {"base": replica["endpoint"] + "/v1", "key": key, "model": "solo"},
            "gateway": {"base": stack.url + "/v1", "key": stack.token, "model": "solo"},
        }
        if "litellm" in args.peers.split(",") and not args.skip_overhead:
            try:
                litellm = start_litellm("solo", replica["endpoint"], key)
                targets["litellm"] = {"base": litellm.url + "/v1", "key": MASTER_KEY}
                targets["litellm"]["model"] = "solo"
                peer_note = f"LiteLLM {litellm_version()} (proxy, 1 worker, no database)"
            except RuntimeError as exc:
                peer_note = f"LiteLLM not measured: {exc}"
        print(f"peer: {peer_note or 'none'}", flush=True)
        rows = [] if args.skip_overhead else overhead(targets, args)
        if litellm is not None:
            litellm.stop()
            litellm = None
        if not args.skip_balancing:
            undeploy(stack, dep)
            lb_rows, info = balancing(stack, args)
    finally:
        if litellm is not None:
            litellm.stop()
        stack.close()
    print()
    print(f"peer: {peer_note or 'none'}; {args.repeat} runs each, the median")
    if rows:
        print_table(
            rows,
            ["target", "load", "tok_s", "x_direct", "p50_ms", "p99_ms", "+p50_ms", "errors",
             "tok/req", "range", "load1"],
        )  # fmt: skip
    if lb_rows:
        print()
        print(
            f"2 replicas, {info['slow']} throttled to run {args.slow_duty:.0%} of the time; "
            f"alone at c={args.lb_concurrency // 2}: {info['slow_tok_s']} vs "
            f"{info['fast_tok_s']} tok/s (p50 {info['slow_p50_ms']} vs {info['fast_p50_ms']} ms)"
        )
        print_table(
            lb_rows,
            ["policy", "load", "tok_s", "p50_ms", "p99_ms", "p99_by_run", "slow_share",
             "errors", "load1"],
        )  # fmt: skip
        for i in range(0, len(lb_rows), 2):
            lor, rr = lb_rows[i], lb_rows[i + 1]
            print(
                f"{lor['load']}: RR/LOR p99 {rr['p99_ms'] / lor['p99_ms']:.2f}x, "
                f"p50 {rr['p50_ms'] / lor['p50_ms']:.2f}x"
            )
    print(f"load at end {machine_load()}; {time.monotonic() - started:.0f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps({"overhead": rows, "balancing": lb_rows}, indent=2))


if __name__ == "__main__":
    main()
