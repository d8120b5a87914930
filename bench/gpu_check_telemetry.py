"""Telemetry on a real NVIDIA GPU: every field the sampler reads, what each NVML call
costs, the energy of a 10 s matmul burst, and the sampler's cost. Prints tables.

    python bench/gpu_check_telemetry.py [--gpu 0] [--burst 10] [--interval 0.1]
    python bench/gpu_check_telemetry.py --fake   # the same on the FAKE NVML, CPU matmul

Energy of the burst, two ways, against each other: the NVML energy counter's difference
(what jobs are charged with) and power x time integrated from samples every --interval
(the fallback for GPUs without the counter). Baseline for the sampler's cost: the
cheapest NVML call (nvmlDeviceGetUtilizationRates) alone.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def timed(fn, n: int) -> float:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            fn()
        except Exception:  # noqa: S110  (an unsupported call is timed all the same)
            pass
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpu", type=int, default=0)
    parser.add_argument("--burst", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--fake", action="store_true", help="use tests/fake_nvml (no GPU)")
    args = parser.parse_args()
    if args.fake:
        import os

        sys.path.insert(0, str(ROOT / "tests" / "fake_nvml"))
        os.environ.setdefault("FAKE_NVML_GPUS", "1")

    from monitoring.gpu_sampler import GpuSampler
    from monitoring.nvml import Nvml
    from monitoring.xid import XidWatcher

    nv = Nvml()
    if not nv.start():
        sys.exit(f"NVML unavailable: {nv.status}")
    m = nv.module
    print(f"driver {nv.driver_version}; pynvml {'FAKE' if getattr(m, 'FAKE', False) else 'real'}")
    xids = XidWatcher(nv)
    xids.start()
    sampler = GpuSampler(nv, xids=xids, slow_every=0, pcie_every=0)
    sampler.sample()
    reading = sampler.sample()[args.gpu]
    print(f"\n## every field of GPU {args.gpu} ({reading['name']}, {reading['uuid']})")
    print("field                  | value")
    for key, value in reading.items():
        if key in ("processes", "mig"):
            value = f"{len(value or [])} item(s): {value}"[:100]
        print(f"{key:<22} | {'n/a' if value is None else value}")
    print(f"XID events registered on GPUs: {xids.registered}")

    handle = m.nvmlDeviceGetHandleByIndex(args.gpu)
    calls = {
        "utilization": lambda: m.nvmlDeviceGetUtilizationRates(handle),
        "memory (v2)": lambda: m.nvmlDeviceGetMemoryInfo(handle, m.nvmlMemory_v2),
        "temperature": lambda: m.nvmlDeviceGetTemperature(handle, 0),
        "memory temperature": lambda: m.nvmlDeviceGetFieldValues(handle, [82]),
        "power": lambda: m.nvmlDeviceGetPowerUsage(handle),
        "energy counter": lambda: m.nvmlDeviceGetTotalEnergyConsumption(handle),
        "clocks (SM)": lambda: m.nvmlDeviceGetClockInfo(handle, 1),
        "P-state": lambda: m.nvmlDeviceGetPerformanceState(handle),
        "fan": lambda: m.nvmlDeviceGetFanSpeed(handle),
        "throttle reasons": lambda: m.nvmlDeviceGetCurrentClocksEventReasons(handle),
        "ECC (volatile)": lambda: m.nvmlDeviceGetTotalEccErrors(handle, 0, 0),
        "remapped rows": lambda: m.nvmlDeviceGetRemappedRows(handle),
        "PCIe TX throughput": lambda: m.nvmlDeviceGetPcieThroughput(handle, 0),
        "PCIe replays": lambda: m.nvmlDeviceGetPcieReplayCounter(handle),
        "compute processes": lambda: m.nvmlDeviceGetComputeRunningProcesses(handle),
        "process utilization": lambda: m.nvmlDeviceGetProcessUtilization(handle, 0),
        "encoder utilization": lambda: m.nvmlDeviceGetEncoderUtilization(handle),
        "MIG mode": lambda: m.nvmlDeviceGetMigMode(handle),
    }
    print("\n## cost of each NVML call (median of 20, ms)")
    costs = {name: timed(fn, 20) for name, fn in calls.items()}
    for name, ms in costs.items():
        print(f"{name:<22} | {ms:8.3f}")
    base = costs["utilization"]
    fast = GpuSampler(nv, xids=xids)  # PCIe every 1 s, ECC/remap every 5 s: as the agent
    fast.sample()
    every = timed(fast.sample, 50)
    full = timed(lambda: GpuSampler(nv, slow_every=0, pcie_every=0).sample(), 5)
    gpus = max(1, len(fast.sample()))
    print(f"\nsampler, all {gpus} GPU(s), as the agent runs it: {every:.3f} ms "
          f"({every / gpus:.3f} ms a GPU; {every / gpus / base:.1f}x one utilization call)")  # fmt: skip  # noqa: E501
    print(f"sampler with every slow field too (PCIe, ECC, remap each time): {full:.3f} ms")

    # --- energy of a matmul burst ---------------------------------------------------------
    import torch

    device = "cpu" if args.fake or not torch.cuda.is_available() else f"cuda:{args.gpu}"
    n = 8192 if device != "cpu" else 512
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16 if device != "cpu" else torch.float32)
    power: list[tuple[float, float]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            p = nv.call(m.nvmlDeviceGetPowerUsage, handle)
            if p is not None:
                power.append((time.monotonic(), p / 1000))
            stop.wait(args.interval)

    idle_start = nv.call(m.nvmlDeviceGetTotalEnergyConsumption, handle)
    time.sleep(2)
    idle_j = (nv.call(m.nvmlDeviceGetTotalEnergyConsumption, handle) - idle_start) / 1000 / 2
    thread = threading.Thread(target=watch, daemon=True)
    e0 = nv.call(m.nvmlDeviceGetTotalEnergyConsumption, handle)
    thread.start()
    t0, flops, sample_costs = time.monotonic(), 0.0, []
    while time.monotonic() - t0 < args.burst:
        b = a @ a
        flops += 2 * n**3
        if device != "cpu":
            torch.cuda.synchronize()
        s0 = time.perf_counter()
        sampler.sample()
        sample_costs.append((time.perf_counter() - s0) * 1000)
    elapsed = time.monotonic() - t0
    e1 = nv.call(m.nvmlDeviceGetTotalEnergyConsumption, handle)
    stop.set()
    thread.join()
    del b
    counter_j = (e1 - e0) / 1000
    integrated = sum((t2 - t1) * p1 for (t1, p1), (t2, _) in itertools.pairwise(power))
    print(
        f"\n## a {elapsed:.1f} s matmul burst on {device} ({n}x{n}, {flops / elapsed / 1e12:.1f} TFLOP/s)"  # noqa: E501
    )
    print("measure                         | joules  | mean W")
    print(f"energy counter difference       | {counter_j:7.1f} | {counter_j / elapsed:6.1f}")
    span = power[-1][0] - power[0][0] if len(power) > 1 else 1
    print(
        f"power x time every {args.interval:g} s         | {integrated:7.1f} | {integrated / span:6.1f}"  # noqa: E501
    )
    print(f"idle before the burst           |         | {idle_j:6.1f}")
    print(
        f"ratio integrated / counter: {integrated / counter_j if counter_j else float('nan'):.3f}"
    )
    print(f"sampler during the burst: median {statistics.median(sample_costs):.3f} ms, "
          f"max {max(sample_costs):.3f} ms")  # fmt: skip
    xids.stop()


if __name__ == "__main__":
    main()
