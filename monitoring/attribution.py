"""Who holds this host's GPUs and processes: the running nodes of job attempts (their
reserved GPU indices and the pids the launcher recorded), read from the database.

Other apps that put processes on GPUs outside jobs add a provider with ``register()``
returning ``Holding`` objects of their own ``kind``; the agent then streams to
``telemetry.<kind>.<id>`` for them without further changes. An app whose work runs *as*
jobs (serving replicas) adds an annotator with ``annotate()``: it gets the job holdings and
fills their ``extra`` (the deployment a replica's job serves), shown with the holder.
"""

from __future__ import annotations

from collections.abc import Callable

from jobs.models import AttemptNode, NodeState
from monitoring.frames import Holding

Provider = Callable[[int], list[Holding]]
Annotator = Callable[[list[Holding]], None]
_providers: list[Provider] = []
_annotators: list[Annotator] = []


def register(provider: Provider) -> None:
    if provider not in _providers:
        _providers.append(provider)


def annotate(annotator: Annotator) -> None:
    if annotator not in _annotators:
        _annotators.append(annotator)


def job_holdings(worker_id: int) -> list[Holding]:
    """The running job nodes on worker ``worker_id``: their GPUs, and as their processes
    the pids the launcher recorded plus the node's guard process."""
    rows = AttemptNode.objects.filter(worker_id=worker_id, state=NodeState.RUNNING).values_list(
        "gpu_indices",
        "pid",
        "pids",
        "attempt__number",
        "attempt__job_id",
        "attempt__job__name",
        "attempt__job__project_id",
        "attempt__job__project__name",
    )
    holdings: dict[int, Holding] = {}
    for gpus, guard, pids, attempt, job_id, name, project_id, project in rows:
        holding = holdings.setdefault(
            job_id,
            Holding(
                kind="job",
                id=job_id,
                name=name,
                project_id=project_id,
                project=project,
                attempt=attempt,
            ),
        )
        holding.gpus.extend(int(i) for i in gpus or [])
        holding.pids.update(int(p) for p in pids or [])
        if guard:
            holding.pids.add(int(guard))  # the job's guard process is the job's too
    return list(holdings.values())


def holdings(worker_id: int) -> list[Holding]:
    found = job_holdings(worker_id)
    if found:
        for annotator in _annotators:
            annotator(found)
    for provider in _providers:
        found.extend(provider(worker_id))
    return found
