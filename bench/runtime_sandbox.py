"""The workload runtime's costs, each against a baseline measured in the same run.

    .venv/bin/python bench/runtime_sandbox.py [--rounds 20] [--ddp-rounds 3] [--skip-env]

1. Sandbox start-up: from starting a node's process tree (the guard and `python -c print`)
   to its first output line, unsandboxed vs in the bubblewrap sandbox (as a project uid
   when run as root, private network), alternating, medians. Target: +30 ms at most.
2. Sandbox steady state: steps/s of the DDP bench script (bench/scripts/ddp_steps.py,
   torchrun, 2 processes, gloo) unsandboxed vs sandboxed, alternating. Target >= 0.99.
3. Environment builds of 3 packages not in the worker's environment: uv, cold (empty
   wheel cache) and reused from the host's cache, against `python -m venv` + pip (no
   cache) for the same packages.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VAR = tempfile.mkdtemp(prefix="cp-bench-runtime-")
os.environ.setdefault("CP_VAR_DIR", VAR)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

from workers.runtime import environments, sandbox  # noqa: E402

PACKAGES = ["tomli-w==1.2.0", "cowsay==6.1", "humanize==4.12.3"]


def layout(work: Path) -> sandbox.Layout:
    return sandbox.Layout(
        work_dir=work,
        gpu_indices=[],
        private_network=True,
        uid=sandbox.uid_for_project(1),
    )


def guarded(argv: list[str]) -> list[str]:
    return [sys.executable, "-S", "-m", "workers.guard", "--", *argv]


def first_line(argv: list[str], cwd: Path) -> float:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()
    elapsed = time.perf_counter() - start
    proc.stdin.close()  # type: ignore[union-attr]
    proc.wait()
    return elapsed


def bench_startup(rounds: int, work: Path) -> None:
    hello = [sys.executable, "-c", "print('hello', flush=True)"]
    plain, boxed = [], []
    for _ in range(rounds):
        plain.append(first_line(guarded(hello), work))
        boxed.append(first_line(sandbox.wrap(guarded(hello), layout(work)), work))
    p, b = statistics.median(plain), statistics.median(boxed)
    print(f"first line, unsandboxed: median {p * 1000:.1f} ms  (n={rounds})")
    print(f"first line, sandboxed:   median {b * 1000:.1f} ms  (n={rounds})")
    print(f"sandbox start-up cost:   {1000 * (b - p):+.1f} ms  (target <= +30 ms)")


def ddp_steps(argv: list[str], work: Path) -> float:
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "HOME": str(work),
        "USER": "cp-job",
        "BENCH_STEPS": "300",
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
    }
    # stdin is the guard's lifeline: keep it open until the run ends.
    proc = subprocess.Popen(
        argv, cwd=work, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    output = proc.stdout.read()
    proc.wait(timeout=600)
    proc.stdin.close()
    found = re.findall(r"steps/s ([\d.]+)", output)
    if not found:
        raise RuntimeError(output[-3000:])
    return float(found[0])


def bench_ddp(rounds: int, work: Path) -> None:
    shutil.copy(ROOT / "bench" / "scripts" / "ddp_steps.py", work / "ddp_steps.py")
    sandbox.give_to(sandbox.uid_for_project(1), work)
    torchrun = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
        "--master-addr=127.0.0.1", "--master-port=29531", "ddp_steps.py",
    ]  # fmt: skip
    plain, boxed = [], []
    for _ in range(rounds):
        plain.append(ddp_steps(guarded(torchrun), work))
        boxed.append(ddp_steps(sandbox.wrap(guarded(torchrun), layout(work)), work))
    p, b = statistics.median(plain), statistics.median(boxed)
    print(f"DDP steps/s, unsandboxed: median {p:.1f}  {[round(x, 1) for x in plain]}")
    print(f"DDP steps/s, sandboxed:   median {b:.1f}  {[round(x, 1) for x in boxed]}")
    print(f"sandboxed / unsandboxed:  {b / p:.3f}  (target >= 0.99)")


def bench_env() -> None:
    settings.ENV_UV_CACHE_DIR = Path(tempfile.mkdtemp(prefix="cp-bench-uvcache-"))
    builder = environments.Builder(lambda _line: None, lambda: True)
    request = environments.Request(packages=PACKAGES)
    start = time.perf_counter()
    built = builder.ensure(request)
    cold = time.perf_counter() - start
    builder.release()
    start = time.perf_counter()
    again = builder.ensure(request)
    warm = time.perf_counter() - start
    builder.release()
    assert again.cached and again.key == built.key
    target = Path(tempfile.mkdtemp(prefix="cp-bench-pip-"))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(target / "venv")], check=True)
    subprocess.run(
        [str(target / "venv" / "bin" / "pip"), "install", "--quiet", "--no-cache-dir",
         "--disable-pip-version-check", *PACKAGES],
        check=True,
    )  # fmt: skip
    pip = time.perf_counter() - start
    print(f"environment of {len(PACKAGES)} packages, uv cold (empty wheel cache): {cold:.2f} s")
    print(f"environment reused from the host's cache:                  {warm * 1000:.0f} ms")
    print(f"python -m venv + pip install, same packages (no cache):    {pip:.2f} s")
    print(f"uv cold / pip:                                             {cold / pip:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--ddp-rounds", type=int, default=3)
    parser.add_argument("--skip-env", action="store_true")
    args = parser.parse_args()
    why = sandbox.probe()
    if why:
        sys.exit(f"cannot sandbox here: {why}")
    work = Path(VAR) / "storage" / "bench" / "node0"
    work.mkdir(parents=True)
    sandbox.give_to(sandbox.uid_for_project(1), work)
    print(f"bubblewrap: {sandbox.version()}; sandbox uid: {sandbox.uid_for_project(1)}")
    bench_startup(args.rounds, work)
    bench_ddp(args.ddp_rounds, work)
    if not args.skip_env:
        bench_env()
    shutil.rmtree(VAR, ignore_errors=True)


if __name__ == "__main__":
    main()
