"""Rows the telemetry tests need: a registered host with GPUs, and a job running on it."""

from __future__ import annotations

from controlplane.cluster import services as cluster
from controlplane.cluster.models import Worker
from jobs.models import Attempt, AttemptNode, Job, NodeState
from jobs.states import AttemptState, JobState


def host(name: str, gpus: int = 2) -> Worker:
    return cluster.register_worker(
        cluster.HostInfo(
            name=name,
            queue=f"host.{name}",
            nvml_status="ok",
            gpus=[
                cluster.GpuSpec(
                    index=i,
                    uuid=f"GPU-fake-{name}-{i}",
                    name="NVIDIA H100 80GB HBM3 (fake)",
                    memory_total=80 * 1024**3,
                    pci_bus_id="",
                )
                for i in range(gpus)
            ],
        )
    )


def running_job(project, worker: Worker, gpus: list[int], pids: list[int], name: str) -> Job:
    job = Job.objects.create(
        project=project,
        name=name,
        spec={},
        entrypoint=["python", "train.py"],
        nodes=1,
        gpus_per_node=len(gpus),
        state=JobState.RUNNING,
    )
    attempt = Attempt.objects.create(job=job, number=1, state=AttemptState.RUNNING)
    AttemptNode.objects.create(
        attempt=attempt,
        rank=0,
        worker=worker,
        worker_name=worker.name,
        gpu_indices=gpus,
        pids=pids,
        state=NodeState.RUNNING,
    )
    return job


def finish(job: Job) -> None:
    AttemptNode.objects.filter(attempt__job=job).update(state=NodeState.EXITED)
    Attempt.objects.filter(job=job).update(state=AttemptState.SUCCEEDED)
    Job.objects.filter(pk=job.pk).update(state=JobState.SUCCEEDED)
