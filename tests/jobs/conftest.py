"""Fixtures for job tests: a cluster of registered hosts and a job factory."""

from __future__ import annotations

import pytest

from controlplane.cluster import services as cluster
from controlplane.tenancy.services import Actor
from jobs import services


def add_host(name: str, gpus: int = 0, cpu_slots: int = 0):
    return cluster.register_worker(
        cluster.HostInfo(
            name=name,
            queue=f"host.{name}",
            address="127.0.0.1",
            cpu_slots=cpu_slots,
            gpus=[
                cluster.GpuSpec(
                    index=i,
                    uuid=f"GPU-{name}-{i}",
                    name="NVIDIA H100",
                    memory_total=80 * 2**30,
                    pci_bus_id="",
                )
                for i in range(gpus)
            ],
        )
    )


@pytest.fixture
def hosts(db):
    """Three hosts: two with 8 GPUs, one with 4; and 4 CPU slots each."""
    return [add_host("gpu-a", 8, 4), add_host("gpu-b", 8, 4), add_host("gpu-c", 4, 4)]


@pytest.fixture
def submit(cast):
    """``submit(user, **spec)``: a job through the real service (validation included)."""

    def make(user=None, **spec):
        data = {
            "name": spec.pop("name", "job"),
            "project": spec.pop("project", "alpha"),
            "entrypoint": spec.pop("entrypoint", ["python", "-m", "workers.recipes.causal_lm"]),
            **spec,
        }
        return services.submit_job(Actor(user=user or cast.bob), data)

    return make


@pytest.fixture(autouse=True)
def own_storage(settings, tmp_path):
    """Each test gets its own CP_STORAGE_DIR (code uploads, checkpoints)."""
    settings.STORAGE_DIR = tmp_path / "storage"
