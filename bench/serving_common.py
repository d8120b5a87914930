"""Shared pieces of the serving benchmarks: the reference model, prompts, load, the client.

Owns the reference model directory (random-init Llama hidden 512, 8 layers, vocab 8192,
31.6M parameters, BPE trained locally; built once under var/serving-bench/), the
32-token prompts, the machine-load record, server processes started for a run, and the
HTTP load generator (httpx async, N requests with C in flight; throughput, p50/p99
latency, time to first token) that every server is measured with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
VAR = ROOT / "var" / "serving-bench"
PROMPT_TOKENS = 32
GEN_TOKENS = 64


def in_thread(fn: Any, *args: Any) -> Any:
    """Run fn(*args) on a short-lived thread and return its result.

    Torch work done on a script's main thread leaves an OpenMP team behind that slows
    the engine thread down 1.6-1.8x on the 2-core VM (see docs/serving.md), so the
    benchmarks keep every torch computation off the main thread.
    """
    import threading

    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn(*args)
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def reference_model(train_steps: int = 0) -> Path:
    """The reference model directory (built on first use)."""
    from serving.engine.tiny import build_tiny_llama

    name = "reference" if not train_steps else f"reference-trained{train_steps}"
    path = VAR / name
    if not (path / "model.safetensors").exists():
        build_tiny_llama(path, "reference", train_steps=train_steps)
    return path


def make_prompts(
    model_dir: Path, count: int, length: int = PROMPT_TOKENS, seed: int = 0
) -> list[str]:
    """`count` text prompts that tokenize to exactly `length` tokens (from local text)."""
    from transformers import AutoTokenizer

    from serving.engine.tiny import corpus_text

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(corpus_text(400_000, skip_chars=2_000_000)).input_ids
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < count:
        start = rng.randrange(0, len(ids) - length)
        text = tok.decode(ids[start : start + length])
        if len(tok(text).input_ids) == length:
            out.append(text)
    return out


def machine_load() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {"load1": round(one, 2), "load5": round(five, 2), "load15": round(fifteen, 2)}


def cpu_idle(seconds: float = 1.0) -> float:
    """Fraction of all CPUs idle over the next `seconds` (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)

    idle0, total0 = sample()
    time.sleep(seconds)
    idle1, total1 = sample()
    return (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(min_idle: float = 0.9, timeout: float = 600.0) -> dict[str, float]:
    """Wait (up to `timeout`) until the CPUs are at least `min_idle` idle for 2 s.

    Our own servers are idle between runs, so this waits out other people's work.
    """
    deadline = time.monotonic() + timeout
    idle = cpu_idle(2.0)
    while idle < min_idle and time.monotonic() < deadline:
        idle = cpu_idle(2.0)
    return {**machine_load(), "idle_before": round(idle, 2)}


def _stat_fields(pid: int | str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from 'state' on


def _busy_ticks() -> int:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[0] + fields[1] + fields[2] + fields[5] + fields[6]


class CpuMeter:
    """How much CPU *other* people's processes used while a measurement ran.

    Ours are this process and every process in the given sessions (each server is
    started in a session of its own). Reported as average cores; on this 2-core
    machine anything above ~0.2 means the run shared the CPUs.
    """

    def __init__(self, sessions: list[int]) -> None:
        self.sessions = {str(s) for s in sessions}

    def _ours(self) -> int:
        total = 0
        me = str(os.getpid())
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            fields = _stat_fields(entry)
            if fields is None:
                continue
            if entry == me or fields[3] in self.sessions:  # fields[3]: session id
                total += int(fields[11]) + int(fields[12])  # utime + stime
        return total

    def __enter__(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self._busy0 = _busy_ticks()
        self._ours0 = self._ours()
        return self

    def __exit__(self, *exc: object) -> None:
        hz = os.sysconf("SC_CLK_TCK")
        elapsed = max(1e-9, time.monotonic() - self._t0)
        others = (_busy_ticks() - self._busy0) - (self._ours() - self._ours0)
        self.others_cores = round(max(0, others) / hz / elapsed, 2)


@dataclass
class Server:
    """A server process for one benchmark run."""

    name: str
    proc: subprocess.Popen
    url: str
    log: Path
    extra: dict = field(default_factory=dict)

    def stop(self) -> None:
        """SIGTERM the server's whole process group (peers fork workers), then SIGKILL."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def start_server(
    name: str,
    cmd: list[str],
    url: str,
    health: str,
    timeout: float = 300.0,
    env: dict | None = None,
) -> Server:
    """Start `cmd` and wait until GET url+health answers 200."""
    VAR.mkdir(parents=True, exist_ok=True)
    log = VAR / f"{name}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group: stop() ends every child
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            Server(name, proc, url, log).stop()
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(url + health, timeout=2).status_code == 200:
                return Server(name, proc, url, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    Server(name, proc, url, log).stop()
    raise RuntimeError(f"{name} not healthy within {timeout} s; see {log}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LoadResult:
    """One load run: per-request latency, TTFT and generated tokens."""

    wall: float
    latencies: list[float]
    ttfts: list[float]
    tokens: int
    errors: int

    def summary(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float:
            if not values:
                return float("nan")
            ordered = sorted(values)
            return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

        return {
            "tok_s": round(self.tokens / self.wall, 1),
            "wall_s": round(self.wall, 2),
            "p50_s": round(pct(self.latencies, 0.50), 3),
            "p99_s": round(pct(self.latencies, 0.99), 3),
            "ttft_p50_s": round(pct(self.ttfts, 0.50), 3),
            "ttft_p99_s": round(pct(self.ttfts, 0.99), 3),
            "mean_s": round(statistics.fmean(self.latencies), 3) if self.latencies else None,
            "tokens": self.tokens,
            "errors": self.errors,
        }


async def _one(
    client: httpx.AsyncClient, kind: str, url: str, prompt: str, model: str, stream: bool
) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    if kind == "openai":
        body = {
            "model": model,
            "prompt": prompt,
            "max_tokens": GEN_TOKENS,
            "temperature": 0,
            "ignore_eos": True,
        }
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
            first = None
            tokens = 0
            async with client.stream("POST", url + "/v1/completions", json=body) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    if first is None:
                        first = time.perf_counter() - t0
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
            return time.perf_counter() - t0, first or 0.0, tokens
        r = await client.post(url + "/v1/completions", json=body)
        r.raise_for_status()
        dt = time.perf_counter() - t0
        return dt, dt, r.json()["usage"]["completion_tokens"]
    r = await client.post(url + "/predict", json={"prompt": prompt})
    r.raise_for_status()
    dt = time.perf_counter() - t0
    return dt, dt, int(r.json()["completion_tokens"])


async def _load(
    kind: str, url: str, prompts: list[str], concurrency: int, model: str, stream: bool
) -> LoadResult:
    limits = httpx.Limits(
        max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8
    )
    timeout = httpx.Timeout(600.0)
    queue: asyncio.Queue = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    latencies: list[float] = []
    ttfts: list[float] = []
    tokens = 0
    errors = 0

    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def worker() -> None:
            nonlocal tokens, errors
            while not queue.empty():
                prompt = queue.get_nowait()
                try:
                    lat, ttft, n = await _one(client, kind, url, prompt, model, stream)
                except httpx.HTTPError:
                    errors += 1
                    continue
                latencies.append(lat)
                ttfts.append(ttft)
                tokens += n

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return LoadResult(wall, latencies, ttfts, tokens, errors)


def run_load(
    kind: str,
    url: str,
    prompts: list[str],
    concurrency: int = 64,
    model: str = "reference",
    stream: bool = False,
) -> LoadResult:
    """Send every prompt with `concurrency` requests in flight; returns the measurements."""
    return asyncio.run(_load(kind, url, prompts, concurrency, model, stream))


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print(" | ".join(c.ljust(widths[c]) for c in columns))
    print("-|-".join("-" * widths[c] for c in columns))
    for r in rows:
        print(" | ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))
    sys.stdout.flush()
