"""The replica over HTTP vs the engine in-process, LitServe and Ray Serve, in one run.

Same model (the reference Llama), same machine, same client (httpx async, 256 requests,
64 in flight, 32-token prompts, 64 greedy tokens each), same max batch size and batch
wait (50 ms) for every server:

* engine: the engine in-process at full batch, the limit the replica is held to (>= 0.85);
* replica: `python -m serving.replica` over HTTP, non-streaming and streaming (TTFT),
  streaming also with `--stream-interval 4` (`--stream-intervals`);
* LitServe 0.2.19 (`max_batch_size`, `batch_timeout`) and Ray Serve 2.60
  (`@serve.batch`), each from its own venv under var/bench-venvs/, generating with
  transformers `generate` on the same directory.

Prints tokens/s, p50/p99 latency, TTFT, and ratios against LitServe and the engine,
with the load average before each run. `python bench/serving_http.py --batches 16,64`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.serving_common import (
    GEN_TOKENS,
    ROOT,
    CpuMeter,
    free_port,
    machine_load,
    make_prompts,
    print_table,
    reference_model,
    run_load,
    start_server,
    wait_quiet,
)

PEER_VENVS = ROOT / "var" / "bench-venvs"


def engine_limit(
    model_dir: Path,
    mode: str,
    batch: int,
    prompts: list[str],
    quiet: float,
    threads: int,
    repeat: int,
) -> dict:
    """The engine in-process at full batch: median of `repeat` runs."""
    from transformers import AutoTokenizer

    from bench.serving_engine import _engine, run_all_at_once

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = [tok(p).input_ids for p in prompts]
    engine, _ = _engine(model_dir, mode, batch, threads)
    runs = []
    for _ in range(repeat):
        load = wait_quiet(quiet, timeout=300) if quiet else machine_load()
        with CpuMeter([]) as meter:
            tps = run_all_at_once(engine, ids, [GEN_TOKENS] * len(ids))
        runs.append({"tok_s": round(tps, 1), **load, "others_cores": meter.others_cores})
    engine.shutdown(timeout=30)
    del engine
    gc.collect()
    runs.sort(key=lambda r: r["tok_s"])
    median = dict(runs[len(runs) // 2])
    median["tok_s_range"] = f"{runs[0]['tok_s']:.0f}-{runs[-1]['tok_s']:.0f}"
    return median


def start_replica(
    model_dir: Path, mode: str, batch: int, wait_ms: float, threads: int, stream_interval: int = 1
):
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "serving.replica",
        "--model",
        str(model_dir),
        "--served-model-name",
        "reference",
        "--port",
        str(port),
        "--quantization",
        mode,
        "--max-batch-size",
        str(batch),
        "--max-wait-ms",
        str(wait_ms),
        "--max-model-len",
        "256",
        "--threads",
        str(threads),
        "--stream-interval",
        str(stream_interval),
    ]
    return start_server(f"replica-{mode}-b{batch}", cmd, f"http://127.0.0.1:{port}", "/health")


def start_peer(name: str, model_dir: Path, batch: int, wait_ms: float, threads: int):
    port = free_port()
    python = PEER_VENVS / name / "bin" / "python"
    if not python.exists():
        raise RuntimeError(f"{python} is missing: create the venv (see docs/serving.md)")
    script = (
        ROOT / "bench" / "peers" / f"{'litserve' if name == 'litserve' else 'rayserve'}_server.py"
    )
    wait_flag = "--batch-timeout" if name == "litserve" else "--batch-wait"
    cmd = [
        str(python),
        str(script),
        "--model",
        str(model_dir),
        "--port",
        str(port),
        "--max-batch-size",
        str(batch),
        wait_flag,
        str(wait_ms / 1000),
    ]
    if name == "ray":
        cmd += ["--threads", str(threads)]
    health = "/health" if name == "litserve" else "/-/healthz"
    env = {"OMP_NUM_THREADS": str(threads)}
    return start_server(
        f"{name}-b{batch}", cmd, f"http://127.0.0.1:{port}", health, timeout=600, env=env
    )


def measure(
    server, kind: str, prompts: list[str], warm: list[str], stream: bool, quiet: float, repeat: int
) -> dict:
    """`repeat` runs; returns the median run (by tok/s) and the spread."""
    run_load(kind, server.url, warm, concurrency=min(16, len(warm)))
    runs = []
    for _ in range(repeat):
        load = wait_quiet(quiet, timeout=300) if quiet else machine_load()
        with CpuMeter([server.proc.pid]) as meter:
            res = run_load(kind, server.url, prompts, concurrency=64, stream=stream).summary()
        runs.append({**res, **load, "others_cores": meter.others_cores})
    runs.sort(key=lambda r: r["tok_s"])
    median = dict(runs[len(runs) // 2])
    median["tok_s_range"] = f"{runs[0]['tok_s']:.0f}-{runs[-1]['tok_s']:.0f}"
    return median


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="16,64")
    p.add_argument("--mode", default="none", help="our quantization mode (peers run fp32)")
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--wait-ms", type=float, default=50.0)
    p.add_argument("--peers", default="litserve,ray", help="comma list, or '' for none")
    p.add_argument(
        "--quiet",
        type=float,
        default=0.9,
        help="before each run wait (up to 5 min) until the CPUs are this idle (0: don't)",
    )
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--repeat", type=int, default=3, help="runs per server; the median is kept")
    p.add_argument(
        "--stream-intervals",
        default="4",
        help="also stream from a replica with each of these --stream-interval values",
    )
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = reference_model()
    prompts = make_prompts(model_dir, args.requests)
    warm = make_prompts(model_dir, 16, seed=1)
    peers = [x for x in args.peers.split(",") if x]
    intervals = [int(x) for x in args.stream_intervals.split(",") if x and int(x) > 1]
    rows = []
    print(f"load at start {machine_load()}; torch threads {args.threads}", flush=True)
    for batch in [int(b) for b in args.batches.split(",")]:
        limit = engine_limit(
            model_dir, args.mode, batch, prompts, args.quiet, args.threads, args.repeat
        )
        rows.append({"server": f"engine in-process ({args.mode})", "batch": batch, **limit})
        print(json.dumps(rows[-1]), flush=True)
        # (stream interval, which of non-streaming / streaming to measure) per replica
        replicas = [(1, (False, True))] + [(i, (True,)) for i in intervals]
        for interval, streams in replicas:
            server = start_replica(
                model_dir, args.mode, batch, args.wait_ms, args.threads, interval
            )
            try:
                for stream in streams:
                    res = measure(server, "openai", prompts, warm, stream, args.quiet, args.repeat)
                    label = f"replica ({args.mode}{', stream' if stream else ''}"
                    label += f", interval {interval})" if interval > 1 else ")"
                    rows.append({"server": label, "batch": batch, **res})
                    rows[-1]["x_engine"] = round(res["tok_s"] / limit["tok_s"], 3)
                    print(json.dumps(rows[-1]), flush=True)
            finally:
                server.stop()
        for peer in peers:
            try:
                server = start_peer(peer, model_dir, batch, args.wait_ms, args.threads)
            except RuntimeError as exc:
                rows.append({"server": peer, "batch": batch, "error": str(exc)})
                print(json.dumps(rows[-1]), flush=True)
                continue
            try:
                res = measure(server, "predict", prompts, warm, False, args.quiet, args.repeat)
                rows.append({"server": f"{peer} (fp32)", "batch": batch, **res})
                print(json.dumps(rows[-1]), flush=True)
            finally:
                server.stop()
        time.sleep(1)
    by_batch: dict[int, dict] = {}
    for r in rows:
        if r["server"].startswith("litserve"):
            by_batch[r["batch"]] = r
    for r in rows:
        lit = by_batch.get(r["batch"])
        if lit and "tok_s" in r and "p99_s" in r:
            r["x_litserve_tok_s"] = round(r["tok_s"] / lit["tok_s"], 2)
            r["p99_vs_litserve"] = round(r["p99_s"] / lit["p99_s"], 2)
    cols = [
        "server",
        "batch",
        "tok_s",
        "p50_s",
        "p99_s",
        "ttft_p50_s",
        "ttft_p99_s",
        "x_engine",
        "x_litserve_tok_s",
        "p99_vs_litserve",
        "errors",
        "tok_s_range",
        "others_cores",
        "load1",
    ]
    print()
    print_table(rows, cols)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
