"""The routing table the gateway serves from, and the message that says it changed.

The table is built from the database (deployments, their revisions, and the endpoints
that replica workloads reported ready); a gateway keeps it in memory and rebuilds it when
a message arrives on the Redis pub/sub channel ``<CP_CACHE_PREFIX>:gateway`` (and every
few seconds, in case a message was missed). ``publish()`` sends that message after the
commit that changed something.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache

import redis
from django.conf import settings
from django.db import transaction

from jobs.models import AttemptNode, NodeState
from jobs.states import AttemptState, JobKind
from serving.models import DEPLOYMENT_GONE, Deployment, Replica, ReplicaState

log = logging.getLogger(__name__)
ROUTING = "routing"  # deployments or replicas changed
AUTH = "auth"  # tokens, users or memberships changed


def channel() -> str:
    return f"{settings.CACHE_PREFIX}:gateway"


@lru_cache(maxsize=1)
def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def publish_now(kind: str = ROUTING) -> None:
    try:
        _client().publish(channel(), json.dumps({"type": kind}))
    except redis.RedisError:  # gateways also refresh on their own every few seconds
        log.warning("could not tell the gateways that the %s changed", kind)


def publish(kind: str = ROUTING) -> None:
    """Tell every gateway after this transaction commits (at once outside one)."""
    transaction.on_commit(lambda: publish_now(kind))


@dataclass
class Endpoint:
    replica_id: int
    number: int
    url: str
    key: str
    revision_id: int
    revision: int = 0  # its number, shown to clients as X-CP-Revision


@dataclass
class Route:
    deployment_id: int
    project_id: int
    project: str
    name: str
    state: str
    revision_id: int | None
    canary_id: int | None
    canary_percent: int
    request_timeout: float
    scale_to_zero: bool
    rate_limit: int | None  # the project's requests per minute
    prefix_affinity: bool = False
    endpoints: list[Endpoint] = field(default_factory=list)


def load_table() -> dict[int, dict[str, Route]]:
    """project id -> deployment name -> Route, for every deployment that takes traffic."""
    table: dict[int, dict[str, Route]] = {}
    routes: dict[int, Route] = {}
    rows = (
        Deployment.objects.exclude(state__in=DEPLOYMENT_GONE)
        .select_related("project", "revision")
        .only(
            "pk", "name", "state", "revision_id", "canary_id", "canary_percent", "min_replicas",
            "project__name", "project__max_requests_per_minute", "revision__config",
        )
    )  # fmt: skip
    for dep in rows:
        config = dep.revision.config if dep.revision else {}
        route = Route(
            deployment_id=dep.pk,
            project_id=dep.project_id,
            project=dep.project.name,
            name=dep.name,
            state=dep.state,
            revision_id=dep.revision_id,
            canary_id=dep.canary_id,
            canary_percent=dep.canary_percent if dep.canary_id else 0,
            request_timeout=float(config.get("request_timeout") or 600),
            scale_to_zero=dep.min_replicas == 0,
            rate_limit=dep.project.max_requests_per_minute,
            prefix_affinity=config.get("prefix_affinity") is True,
        )
        routes[dep.pk] = route
        table.setdefault(dep.project_id, {})[dep.name] = route
    nodes = {
        job_id: (url, key)
        for job_id, url, key in AttemptNode.objects.filter(
            state=NodeState.RUNNING,
            attempt__state=AttemptState.RUNNING,
            attempt__stop_requested="",
            attempt__job__kind=JobKind.REPLICA,
        )
        .exclude(endpoint="")
        .values_list("attempt__job_id", "endpoint", "service_key")
    }
    replicas = Replica.objects.filter(
        job_id__in=list(nodes), deployment_id__in=list(routes)
    ).exclude(state__in=[ReplicaState.DRAINING, ReplicaState.STOPPED, ReplicaState.FAILED])
    for pk, number, dep_id, rev_id, rev, job_id in replicas.values_list(
        "pk", "number", "deployment_id", "revision_id", "revision__number", "job_id"
    ):
        url, key = nodes[job_id]
        routes[dep_id].endpoints.append(
            Endpoint(pk, number, url, key, revision_id=rev_id, revision=rev)
        )
    return table
