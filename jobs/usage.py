"""The jobs app's answer to "who uses this device" (see controlplane.cluster.usage)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from controlplane.tenancy.models import Membership
from jobs.models import Reservation


def job_usage(user: Any, worker_ids: Iterable[int]) -> dict[tuple[int, str, int], dict]:
    rows = Reservation.objects.filter(worker_id__in=list(worker_ids)).values_list(
        "worker_id",
        "kind",
        "index",
        "attempt__number",
        "attempt__job_id",
        "attempt__job__name",
        "attempt__job__project_id",
        "attempt__job__project__name",
    )
    mine = (
        None
        if user.is_superuser
        else set(Membership.objects.filter(user=user).values_list("project_id", flat=True))
    )
    usage = {}
    for worker_id, kind, index, attempt, job_id, name, project_id, project in rows:
        if mine is None or project_id in mine:
            usage[(worker_id, kind, index)] = {
                "kind": "job",
                "job": job_id,
                "name": name,
                "project": project,
                "attempt": attempt,
            }
        else:
            usage[(worker_id, kind, index)] = {"kind": "job", "hidden": True}
    return usage
