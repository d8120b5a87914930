"""What a deployment's replicas use: their devices now, and energy per generated token.

A replica is a job, so the telemetry agent already attributes its GPUs and processes to
that job and keeps its usage (``monitoring.JobUsage``: joules from the GPU energy counter,
or power x time where a GPU has none; CPU-seconds of its processes). Here that is read
per deployment:

- ``devices``: for each live replica, the latest reading of the GPUs its job holds (or its
  processes' CPU and memory on a CPU replica), from the latest-sample store;
- ``energy``: the replicas' joules (every replica the deployment ever had) over the tokens
  its replicas generated, per 1,000 tokens. On a CPU replica there is no energy counter
  (this machine has no RAPL either), so the figure is CPU-seconds per 1,000 tokens, and
  ``basis`` says which one a number is;
- ``annotate``: the telemetry's label of a replica's job names the deployment it serves, so
  the GPU inventory and host pages say "deployment <name>" and not only "job #N".
"""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Q, Sum

from jobs.models import AttemptNode, NodeState
from monitoring import frames, store
from monitoring.models import JobUsage
from serving.models import Replica

BASIS = {
    "counter": "GPU energy counters (NVML)",
    "power": "GPU power x time (a GPU without an energy counter)",
    "cpu": "CPU-seconds of the replicas' processes: a CPU has no energy counter here",
    "none": "nothing measured yet",
}


def energy(deployment_id: int, tokens: float) -> dict[str, Any]:
    """Energy (or CPU time) of every replica the deployment has had, per 1,000 of the
    ``tokens`` they generated (None before the first token)."""
    totals = JobUsage.objects.filter(job__replica__deployment_id=deployment_id).aggregate(
        j=Sum("joules"),
        gpu_s=Sum("gpu_seconds"),
        cpu_s=Sum("cpu_seconds"),
        estimated=Count("pk", filter=Q(energy_source="power", gpu_seconds__gt=0)),
    )
    joules = totals["j"] or 0.0
    gpu_seconds = totals["gpu_s"] or 0.0
    cpu_seconds = totals["cpu_s"] or 0.0
    if gpu_seconds > 0:
        basis = "power" if totals["estimated"] else "counter"
    else:
        basis = "cpu" if cpu_seconds > 0 else "none"
    per_1k = (lambda v: round(v * 1000.0 / tokens, 4)) if tokens > 0 else (lambda v: None)
    return {
        "tokens": tokens,
        "joules": round(joules, 3),
        "gpu_seconds": round(gpu_seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "joules_per_1k_tokens": per_1k(joules) if gpu_seconds > 0 else None,
        "cpu_seconds_per_1k_tokens": per_1k(cpu_seconds),
        "basis": basis,
        "basis_text": BASIS[basis],
    }


def devices(replicas: list[Replica]) -> list[dict[str, Any]]:
    """The latest reading of each live replica's devices: ``[{replica, job, host, gpus:
    [{index, name, util_gpu, mem_used, mem_total, power_w}], cpu, rss}]``."""
    by_job = {r.job_id: r for r in replicas}
    if not by_job:
        return []
    nodes = list(
        AttemptNode.objects.filter(attempt__job_id__in=list(by_job), state=NodeState.RUNNING)
        .exclude(worker=None)
        .values_list("attempt__job_id", "worker_id")
    )
    latest = store.latest({worker for _, worker in nodes})
    out = []
    for job_id, worker_id in sorted(nodes, key=lambda n: by_job[n[0]].number):
        frame = latest.get(worker_id)
        mine = frames.narrow(frame, "job", job_id) if frame else None
        if mine is None:
            continue
        usage = mine["usage"]
        out.append(
            {
                "replica": by_job[job_id].number,
                "job": job_id,
                "host": mine["host"],
                "t": mine["t"],
                "gpus": [
                    {
                        k: g.get(k)
                        for k in ("index", "name", "util_gpu", "mem_used", "mem_total", "power_w")
                    }
                    for g in mine["gpus"]
                ],
                "cpu": usage.get("cpu"),
                "rss": usage.get("rss"),
            }
        )
    return out


def annotate(holdings: list[frames.Holding]) -> None:
    """Name the deployment of each replica job among ``holdings`` (one query)."""
    jobs = {h.id: h for h in holdings if h.kind == "job"}
    if not jobs:
        return
    rows = Replica.objects.filter(job_id__in=list(jobs)).values_list(
        "job_id", "number", "deployment_id", "deployment__name"
    )
    for job_id, number, deployment_id, name in rows:
        jobs[job_id].extra["deployment"] = {"id": deployment_id, "name": name, "replica": number}
