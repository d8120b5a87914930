"""Capacity and placement: the hosts' free devices, the running attempts, and where a
gang of nodes fits (best fit, one node per host) — the scheduler's arithmetic, no writes."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from controlplane.cluster.models import Gpu, Worker
from jobs.models import Reservation
from jobs.states import ATTEMPT_LIVE


@dataclass
class Host:
    id: int
    name: str
    address: str
    gpus: list[int]
    slots: int
    containers: bool = False  # it has a container runtime (for image jobs)
    free_gpus: list[int] = field(default_factory=list)
    free_slots: list[int] = field(default_factory=list)
    # devices held by attempts that are already stopping: free soon
    stopping_gpus: int = 0
    stopping_slots: int = 0

    def free(self, gpu_job: bool) -> int:
        return len(self.free_gpus) if gpu_job else len(self.free_slots)

    def soon(self, gpu_job: bool) -> int:
        return self.stopping_gpus if gpu_job else self.stopping_slots


@dataclass
class Running:
    """A live attempt as the scheduler sees it, for quotas and preemption."""

    attempt_id: int
    job_id: int
    project_id: int
    priority: int
    gpus: int
    started: float
    stopping: bool
    devices: dict[int, tuple[int, int]]  # host id -> (gpus, slots) it holds there
    kind: str = "training"


def load_hosts(now) -> dict[int, Host]:
    hosts: dict[int, Host] = {}
    # A host that cannot sandbox workloads (bubblewrap missing) runs none.
    # Nor one that just lost a lease (frozen, cut off, or dead before it shows offline).
    workers = (
        Worker.objects.online(now)
        .exclude(sandbox__startswith="unavailable")
        .filter(suspect_since=None)
    )
    for worker in workers.values("id", "name", "address", "cpu_slots", "container_runtime"):
        hosts[worker["id"]] = Host(
            id=worker["id"],
            name=worker["name"],
            address=worker["address"],
            gpus=[],
            slots=worker["cpu_slots"],
            containers=bool(worker["container_runtime"]),
        )
    for worker_id, index in Gpu.objects.filter(worker_id__in=hosts).values_list(
        "worker_id", "index"
    ):
        hosts[worker_id].gpus.append(index)
    taken: dict[tuple[int, str], set[int]] = defaultdict(set)
    for worker_id, kind, index in Reservation.objects.filter(worker_id__in=hosts).values_list(
        "worker_id", "kind", "index"
    ):
        taken[(worker_id, kind)].add(index)
    for host in hosts.values():
        host.gpus.sort()
        host.free_gpus = [i for i in host.gpus if i not in taken[(host.id, Reservation.GPU)]]
        host.free_slots = [
            i for i in range(host.slots) if i not in taken[(host.id, Reservation.CPU)]
        ]
    return hosts


def load_running() -> list[Running]:
    attempts: dict[int, Running] = {}
    rows = Reservation.objects.filter(attempt__state__in=ATTEMPT_LIVE).values_list(
        "attempt_id",
        "attempt__job_id",
        "attempt__job__project_id",
        "attempt__job__priority",
        "attempt__job__nodes",
        "attempt__job__gpus_per_node",
        "attempt__created_at",
        "attempt__stop_requested",
        "attempt__job__kind",
        "worker_id",
        "kind",
    )
    for row in rows:
        attempt_id, job_id, project_id, prio, nodes, gpn, created, stop, job_kind = row[:9]
        worker_id, kind = row[9:]
        run = attempts.get(attempt_id)
        if run is None:
            run = attempts[attempt_id] = Running(
                attempt_id=attempt_id,
                job_id=job_id,
                project_id=project_id,
                priority=prio,
                gpus=nodes * gpn,
                started=created.timestamp(),
                stopping=bool(stop),
                devices={},
                kind=job_kind,
            )
        gpus, slots = run.devices.get(worker_id, (0, 0))
        run.devices[worker_id] = (gpus + (kind == Reservation.GPU), slots + (kind == "cpu"))
    return list(attempts.values())


def fit(job: Pending, hosts: list[Host], extra: dict[int, int] | None = None) -> list[Host] | None:
    """The hosts for a gang placement (one node per host), best fit first; None if none.

    ``extra`` adds devices per host id that would be free (free-soon or preemptible).
    """
    gpu_job = job.gpus_per_node > 0
    need = job.gpus_per_node if gpu_job else job.procs_per_node
    extra = extra or {}
    fits = [
        h
        for h in hosts
        if h.free(gpu_job) + extra.get(h.id, 0) >= need and (h.containers or not job.image)
    ]
    if len(fits) < job.nodes:
        return None
    fits.sort(key=lambda h: (h.free(gpu_job) + extra.get(h.id, 0) - need, h.name))
    return fits[: job.nodes]


def within_share(
    job: Pending, hosts: list[Host], running: list[Running], active: set[int]
) -> set[int]:
    """The other projects that use no more than their fair share of the devices ``job``
    needs (the capacity split evenly among the projects with work, running or pending):
    their jobs are not preempted for another project's, whatever its priority."""
    gpu_job = job.gpus_per_node > 0
    capacity = sum(len(h.gpus) if gpu_job else h.slots for h in hosts)
    share = capacity / max(1, len(active))
    used: dict[int, int] = defaultdict(int)
    for run in running:
        for gpus, slots in run.devices.values():
            used[run.project_id] += gpus if gpu_job else slots
    return {p for p in active if p != job.project_id and used[p] <= share}


def victims(
    job: Pending, hosts: list[Host], running: list[Running], protected: set[int] | None = None
) -> list[Running] | None:
    """Lower-priority attempts whose devices would let ``job`` fit, fewest and newest first;
    none of a ``protected`` project's."""
    gpu_job = job.gpus_per_node > 0
    need = job.gpus_per_node if gpu_job else job.procs_per_node
    protected = protected or set()
    candidates = sorted(
        (
            r
            for r in running
            if r.priority < job.priority and not r.stopping and r.project_id not in protected
        ),
        key=lambda r: (r.priority, -r.started),
    )
    preemptible: dict[int, int] = defaultdict(int)
    for run in candidates:
        for host_id, (gpus, slots) in run.devices.items():
            preemptible[host_id] += gpus if gpu_job else slots
    chosen = fit(job, hosts, preemptible)
    if chosen is None:
        return None
    victims: list[Running] = []
    for host in chosen:
        short = (
            need
            - host.free(gpu_job)
            - sum((v.devices.get(host.id, (0, 0))[0 if gpu_job else 1]) for v in victims)
        )
        for run in candidates:
            if short <= 0:
                break
            if run in victims or host.id not in run.devices:
                continue
            victims.append(run)
            short -= run.devices[host.id][0 if gpu_job else 1]
    return victims


@dataclass(slots=True)
class Pending:
    """A pending job as a pass sees it (a light row, not a model instance)."""

    pk: int
    project_id: int
    priority: int
    nodes: int
    gpus_per_node: int
    procs_per_node: int
    reason: str
    image: str = ""
    kind: str = "training"

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass
class Placement:
    job: Pending
    hosts: list[Host]
    devices: list[list[int]]


def reserve(job: Pending, hosts: list[Host]) -> Placement:
    gpu_job = job.gpus_per_node > 0
    devices = []
    for host in hosts:
        if gpu_job:
            picked, host.free_gpus = (
                host.free_gpus[: job.gpus_per_node],
                host.free_gpus[job.gpus_per_node :],
            )
        else:
            picked, host.free_slots = (
                host.free_slots[: job.procs_per_node],
                host.free_slots[job.procs_per_node :],
            )
        devices.append(picked)
    return Placement(job=job, hosts=hosts, devices=devices)


def mark_stopping(run: Running, hosts: dict[int, Host]) -> None:
    for host_id, (gpus, slots) in run.devices.items():
        if host_id in hosts:
            hosts[host_id].stopping_gpus += gpus
            hosts[host_id].stopping_slots += slots
