"""Telemetry fan-out: sample-to-browser latency and dropped frames with 64 simulated GPUs
and 100 websocket clients, and the cluster page's first paint with 64 GPUs.

    .venv/bin/python bench/telemetry_fanout.py [--gpus 64] [--clients 100] [--seconds 30]
        [--interval 1] [--no-browser]

Starts the real stack (uvicorn, a Celery worker whose agent samples the FAKE NVML with
--gpus GPUs, Redis, beat) in a temporary directory. Latency is the time from the agent's
timestamp on a sample (``t``, taken when it starts reading) to its arrival in a client
(same machine, same clock), over every sample every client got. A frame is dropped when
a client never sees a sequence number (server-side drops are also announced by
``dropped`` messages; both are counted). Baseline in the same run: one client alone.
The clients share this machine's 2 cores with the server: their own decoding is in the
figures. --dead clients stop reading right after the handshake (their sockets back up), to
show that a dead browser costs the others nothing: their samples still all arrive. First
paint: headless Chromium (when installed) loads /telemetry/ signed in, 5 times; baseline:
the home page in the same browser.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.browser_common import signed_in_page  # noqa: E402
from tests.e2e.stack import ADMIN_PASSWORD, Stack  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return (
        ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")
    )


async def client(url: str, token: str, seconds: float, out: dict) -> None:
    latencies, seqs, dropped, sizes = [], [], 0, []
    async with websockets.connect(
        url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None,
        open_timeout=60,
    ) as ws:  # fmt: skip
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                text = await asyncio.wait_for(ws.recv(), timeout=max(0.1, end - time.monotonic()))
            except TimeoutError:
                break
            arrived = time.time()
            msg = json.loads(text)
            if msg["type"] == "sample":
                latencies.append((arrived - msg["t"]) * 1000)
                seqs.append(msg["seq"])
                sizes.append(len(text))
            elif msg["type"] == "dropped":
                dropped += msg["count"]
    missing = (seqs[-1] - seqs[0] + 1 - len(set(seqs))) if seqs else 0
    out.setdefault("latencies", []).extend(latencies)
    out["received"] = out.get("received", 0) + len(seqs)
    out["missing"] = out.get("missing", 0) + missing
    out["announced"] = out.get("announced", 0) + dropped
    out.setdefault("sizes", []).extend(sizes)


async def dead_client(url: str, token: str, seconds: float, out: dict) -> None:
    """A browser that stops reading: a raw socket with a small receive window that
    completes the handshake and then reads nothing until the end, when it drains what is
    left for a few seconds and counts the ``dropped`` notices the server sent it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow link's window
    parts = urlparse(url)
    sock.connect((parts.hostname, parts.port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    await writer.drain()
    await asyncio.sleep(seconds)
    data, end = b"", time.monotonic() + 5
    try:
        while time.monotonic() < end:
            chunk = await asyncio.wait_for(reader.read(1 << 20), timeout=2)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        pass
    writer.close()
    counts = [int(n) for n in re.findall(rb'"type": "dropped", "v": 1, "count": (\d+)', data)]
    out["dead_announced"] = out.get("dead_announced", 0) + sum(counts)


async def fan_out(stack: Stack, token: str, clients: int, seconds: float, dead: int = 0) -> dict:
    url = f"ws://127.0.0.1:{stack.http_port}/ws/telemetry/"
    out: dict = {}
    await asyncio.gather(
        *(client(url, token, seconds, out) for _ in range(clients)),
        *(dead_client(url, token, seconds, out) for _ in range(dead)),
    )
    return out


def first_paint(stack: Stack, runs: int) -> dict | None:
    chromium = shutil.which("chromium")
    if not chromium:
        return None
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="cp-bench-chromium-")
    read = "() => performance.getEntriesByName('first-contentful-paint')[0]?.startTime"
    results: dict[str, list[float]] = {"/": [], "/telemetry/": []}
    with sync_playwright() as p:
        browser, page = signed_in_page(p, stack, profile, ADMIN_PASSWORD)
        for _ in range(runs):
            for path in results:
                page.goto(f"{stack.url}{path}")
                page.wait_for_function(f"({read})() !== undefined", timeout=10000)
                results[path].append(page.evaluate(read))
        tiles = page.locator(".tm-tile").count() if page.url.endswith("/telemetry/") else None
        browser.close()
    shutil.rmtree(profile, ignore_errors=True)
    return {"home": results["/"], "cluster": results["/telemetry/"], "tiles": tiles}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpus", type=int, default=64)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--dead", type=int, default=5, help="clients that stop reading")
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still stop the stack
    print(f"# load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    stack = Stack(fake_gpus=args.gpus, extra_env={"CP_TELEMETRY_INTERVAL": str(args.interval)})
    try:
        stack.start()
        stack.wait_ready()
        token = stack.manage("create_token", "admin", "--name", "bench").stdout.strip()
        api = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {token}"})
        deadline = time.monotonic() + 30
        while not api.get("/api/v1/telemetry/").json()["hosts"] and time.monotonic() < deadline:
            time.sleep(0.5)
        baseline = asyncio.run(fan_out(stack, token, 1, min(15.0, args.seconds)))
        loaded = asyncio.run(fan_out(stack, token, args.clients, args.seconds, args.dead))
        agent = api.get("/api/v1/telemetry/").json()["hosts"][0]["agent"]
        paint = None if args.no_browser else first_paint(stack, 5)
    finally:
        stack.close()
    expected = args.clients * args.seconds / args.interval
    print(f"\n## fan-out: {args.gpus} fake GPUs, a sample every {args.interval:g} s, "
          f"{args.clients} clients (+{args.dead} that stop reading) for {args.seconds:g} s")  # fmt: skip  # noqa: E501
    print("clients | samples received | p50 ms | p99 ms | max ms | missing | announced drops")
    for n, r in ((1, baseline), (args.clients, loaded)):
        lat = r.get("latencies", [])
        print(f"{n:<7} | {r.get('received', 0):>16} | {pct(lat, .5):6.1f} | {pct(lat, .99):6.1f} | "
              f"{max(lat or [0]):6.1f} | {r.get('missing', 0):>7} | {r.get('announced', 0)}")  # fmt: skip  # noqa: E501
    drop_rate = loaded.get("missing", 0) / max(
        1, loaded.get("received", 0) + loaded.get("missing", 0)
    )
    print(f"frame size: {statistics.median(loaded.get('sizes') or [0]) / 1024:.1f} KiB; "
          f"received {loaded.get('received', 0)} of ~{expected:.0f} expected; drop rate {drop_rate:.4%}")  # fmt: skip  # noqa: E501
    print(f"clients that stopped reading: {loaded.get('dead_announced', 0)} sample(s) dropped "
          "for them and announced, none for the others")  # fmt: skip
    print(f"ratio p99 with {args.clients} clients / 1 client: "
          f"{pct(loaded['latencies'], .99) / pct(baseline['latencies'], .99):.2f}")  # fmt: skip
    print(f"agent ({args.gpus} GPUs): {agent.get('cpu_percent')}% of a core, "
          f"{agent.get('sample_ms')} ms a sample, {agent.get('tick_ms')} ms a tick, late {agent.get('late')}")  # fmt: skip  # noqa: E501
    if paint:
        home, cluster = statistics.median(paint["home"]), statistics.median(paint["cluster"])
        print(f"\n## first contentful paint (Chromium, median of 5): /telemetry/ with {args.gpus} "
              f"GPUs {cluster:.0f} ms; home page {home:.0f} ms; ratio {cluster / home:.2f} "
              f"(target < 1000 ms)")  # fmt: skip
        print(
            f"runs: cluster {[round(x) for x in paint['cluster']]}, home {[round(x) for x in paint['home']]}"  # noqa: E501
        )
    elif not args.no_browser:
        print("\nfirst paint: skipped, no chromium on this machine")
    print(f"# load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
