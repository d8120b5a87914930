"""Launcher overhead: the same DDP script run directly with torchrun and as a job.

    .venv/bin/python bench/jobs_launcher.py [--rounds 3] [--procs 2]

The script (bench/scripts/ddp_steps.py) times its own training loop after a warm-up and
prints steps/s. Runs alternate (direct, job, direct, job, ...) so that drift in the
machine's load hits both alike; medians are compared. Target: job / direct >= 0.97.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.stack import Stack  # noqa: E402
from tests.plugin import free_port  # noqa: E402

SCRIPT = ROOT / "bench" / "scripts" / "ddp_steps.py"
SPEED = re.compile(r"steps/s ([0-9.]+)")


def direct(procs: int) -> float:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={procs}",
         "--master-addr=127.0.0.1", f"--master-port={free_port()}", str(SCRIPT)],
        env=env, capture_output=True, text=True, timeout=600, check=True,
    ).stdout  # fmt: skip
    return float(SPEED.search(out).group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--procs", type=int, default=2)
    args = parser.parse_args()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(SCRIPT, arcname="ddp_steps.py")
    code = buffer.getvalue()
    stack = Stack(fake_gpus=0, extra_env={"CP_LOG_LEVEL": "warning"})
    try:
        stack.start()
        stack.wait_ready()
        token = stack.manage("create_token", "admin").stdout.strip()
        api = httpx.Client(
            base_url=stack.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        spec = json.dumps(
            {
                "name": "ddp-bench",
                "entrypoint": ["python", "ddp_steps.py"],
                "env": {"OMP_NUM_THREADS": "1"},
                "resources": {"procs_per_node": args.procs},
                "max_restarts": 0,
            }
        )

        def as_job() -> float:
            job = api.post(
                "/api/v1/jobs/",
                data={"spec": spec},
                files={"code": ("c.tgz", code, "application/gzip")},
            ).json()
            while api.get(f"/api/v1/jobs/{job['id']}/").json()["state"] not in (
                "SUCCEEDED",
                "FAILED",
                "CANCELLED",
            ):
                time.sleep(0.2)
            text = "".join(
                c["text"]
                for c in api.get(f"/api/v1/jobs/{job['id']}/logs/", params={"limit": 500}).json()[
                    "chunks"
                ]
            )
            return float(SPEED.search(text).group(1))

        direct_runs, job_runs = [], []
        for _ in range(args.rounds):
            direct_runs.append(direct(args.procs))
            job_runs.append(as_job())
        d, j = statistics.median(direct_runs), statistics.median(job_runs)
        print(f"machine load: {open('/proc/loadavg').read().split()[:3]}")
        print(f"DDP {args.procs} processes, gloo, {args.rounds} rounds (medians)")
        print(f"{'run':<28}{'steps/s':>10}")
        print(f"{'torchrun directly':<28}{d:>10.2f}   runs {direct_runs}")
        print(f"{'as a job (launcher)':<28}{j:>10.2f}   runs {job_runs}")
        print(f"ratio job / direct: {j / d:.3f} (target >= 0.97)")
    finally:
        stack.close()


if __name__ == "__main__":
    main()
