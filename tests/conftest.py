"""Shared fixtures: the cast of users (built once per test) and API clients for them.

Alice is the admin of project "alpha", Bob a member, Carol a viewer; Dave is the admin of
project "beta" and has no access to alpha; Olga is an operator (superuser).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from controlplane.cluster import services as cluster
from controlplane.tenancy import services
from controlplane.tenancy.models import Membership, Project, Role
from jobs import services as job_services

User = get_user_model()


@dataclass
class Cast:
    alice: object
    bob: object
    carol: object
    dave: object
    olga: object
    alpha: Project
    beta: Project


@pytest.fixture(autouse=True)
def fast_password_hashing(settings) -> None:
    """Test users need no brute-force resistance; PBKDF2 would cost ~0.3 s a user."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def cast(db) -> Cast:
    users = {
        name: User.objects.create_user(name, password=f"{name}-pass-123")
        for name in ("alice", "bob", "carol", "dave")
    }
    olga = User.objects.create_superuser("olga", password="olga-pass-123")
    alpha = Project.objects.create(name="alpha", max_priority=2)  # beta: the default, normal
    beta = Project.objects.create(name="beta")
    for user, project, role in (
        (users["alice"], alpha, Role.ADMIN),
        (users["bob"], alpha, Role.MEMBER),
        (users["carol"], alpha, Role.VIEWER),
        (users["dave"], beta, Role.ADMIN),
    ):
        Membership.objects.create(user=user, project=project, role=role)
    return Cast(**users, olga=olga, alpha=alpha, beta=beta)


@pytest.fixture
def api():
    """``api(user)``: an APIClient that authenticates as ``user`` with a real API token."""

    def make(user=None) -> APIClient:
        client = APIClient()
        if user is not None:
            _, raw = services.create_token(services.Actor.system(), user, "test")
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client

    return make


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
        return job_services.submit_job(services.Actor(user=user or cast.bob), data)

    return make
