"""Deployments on the database side: the API's validation and tenancy, the controller's
passes (replicas as jobs the scheduler places, a rolling update that starts the new
replica before draining the old, a canary, deletion), and the autoscaler's rule."""

from __future__ import annotations

import pytest
from django.utils import timezone

from jobs import lifecycle, scheduler
from jobs.models import AttemptNode, Job
from jobs.states import JobKind, JobState
from serving.deployments import autoscale, controller
from serving.models import Deployment, Replica
from tests.conftest import add_host
from tests.plugin import free_port

pytestmark = pytest.mark.django_db
URL = "/api/v1/deployments/"


def create(api, user, **body):
    return api(user).post(URL, {"project": "alpha", "model": "tiny", **body}, format="json")


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"name": "Bad Name"}, "name", "slug"),
        ({"name": "d", "model": "nope"}, "model", "no model named"),
        ({"name": "d", "version": 7}, "version", "no version 7"),
        ({"name": "d", "replicas": 0}, "replicas", "scale to zero"),
        ({"name": "d", "replicas": 2, "max_replicas": 3}, "replicas", "not both"),
        ({"name": "d", "min_replicas": 3, "max_replicas": 2}, "replicas", "at most max"),
        ({"name": "d", "max_replicas": 65}, "max_replicas", "64"),
        ({"name": "d", "quantization": "int3"}, "quantization", "not a valid choice"),
        ({"name": "d", "quantization": "int4"}, "quantization", "needs a GPU"),
        ({"name": "d", "max_batch_size": 0}, "max_batch_size", "greater than or equal"),
        ({"name": "d", "request_timeout": -1}, "request_timeout", "greater than or equal"),
        ({"name": "d", "cpus_per_replica": 99}, "cpus_per_replica", "0 host(s) with 99 CPU"),
        ({"name": "d", "priority": "urgent"}, "priority", "not a valid choice"),
        ({"name": "d", "autoscaling": {"target": 1}}, "autoscaling", "Unknown field"),
        ({"name": "d", "temperature": 1}, "temperature", "Unknown field"),
        ({"name": "d", "prefix_affinity": 3}, "prefix_affinity", "true or false"),
        ({"name": "d", "canary": {"percent": 5}}, "canary", "first"),
    ],
)
def test_bad_input_is_a_400_that_says_what_to_fix(cast, api, version, body, field, says):
    add_host("cpu-1", cpu_slots=4)
    response = create(api, cast.bob, **body)
    # A model or version that does not exist is a 404 naming the field (as its URL would be).
    missing = field in ("model", "version") and says.startswith("no ")
    assert response.status_code == (404 if missing else 400), response.content
    assert says.lower() in str(response.json().get(field, response.json())).lower()
    assert Deployment.objects.count() == 0 and Job.objects.count() == 0


def test_another_projects_deployment_is_a_404_and_names_are_per_project(cast, api, version):
    add_host("cpu-1", cpu_slots=4)
    made = create(api, cast.bob, name="chat", replicas=2)
    assert made.status_code == 201, made.content
    body = made.json()
    assert (body["state"], body["version"], body["replicas"], body["priority"]) == (
        "DEPLOYING", 1, 2, "normal",
    )  # fmt: skip
    assert body["config"]["quantization"] == "none" and body["revision"]["number"] == 1
    dep_id = body["id"]
    assert create(api, cast.bob, name="chat").status_code == 409
    for user in (cast.dave,):
        assert api(user).get(f"{URL}{dep_id}/").status_code == 404
        assert api(user).patch(f"{URL}{dep_id}/", {"replicas": 3}, format="json").status_code == 404
        assert api(user).delete(f"{URL}{dep_id}/").status_code == 404
        assert api(user).get(URL).json()["results"] == []
    # A viewer reads but does not change.
    assert api(cast.carol).get(f"{URL}{dep_id}/").status_code == 200
    assert (
        api(cast.carol).patch(f"{URL}{dep_id}/", {"replicas": 1}, format="json").status_code == 403
    )
    # Dave cannot deploy into alpha, nor use alpha's model from beta.
    refused = api(cast.dave).post(
        URL, {"project": "alpha", "model": "tiny", "name": "x"}, format="json"
    )
    assert refused.status_code == 404 and "belong" in str(refused.json())
    refused = api(cast.dave).post(
        URL, {"project": "beta", "model": "tiny", "name": "x"}, format="json"
    )
    assert refused.status_code == 404 and "no model" in str(refused.json()).lower()


def ready(replica: Replica):
    """What the worker does: claim the replica's node and report its endpoint (a closed
    loopback port: the controller's scrape of it fails fast, as a dead replica's would)."""
    port = free_port()
    [node] = AttemptNode.objects.filter(attempt__job=replica.job, state="WAITING")
    plan = lifecycle.claim_node(node.attempt_id, node.rank, node.worker_name)
    assert plan is not None and plan.kind == JobKind.REPLICA and plan.service_key
    assert plan.entrypoint[:3] == ["python", "-m", "serving.replica"]
    assert lifecycle.record_ready(plan.node_id, plan.claim, f"http://127.0.0.1:{port}", {})
    return plan


def states(dep: Deployment) -> list[tuple[int, int, str]]:
    return sorted(
        (r.number, r.revision.number, r.state)
        for r in dep.replica_set.exclude(state__in=["STOPPED", "FAILED"])
    )


def test_a_rolling_update_starts_the_new_replica_before_draining_the_old(cast, api, version):
    add_host("cpu-1", cpu_slots=4)
    dep_id = create(api, cast.bob, name="chat", replicas=2).json()["id"]
    controller.reconcile_all()
    dep = Deployment.objects.get(pk=dep_id)
    assert states(dep) == [(1, 1, "PENDING"), (2, 1, "PENDING")]
    # The replicas are jobs the scheduler places; they hold CPU slots.
    assert len(scheduler.schedule().placed) == 2
    plans = [ready(r) for r in dep.replica_set.order_by("number")]
    controller.reconcile_all()
    dep.refresh_from_db()
    assert dep.state == "READY" and states(dep) == [(1, 1, "READY"), (2, 1, "READY")]

    changed = api(cast.bob).patch(f"{URL}{dep_id}/", {"max_batch_size": 4}, format="json")
    assert changed.status_code == 200 and changed.json()["revision"]["number"] == 2
    controller.reconcile_all()
    # One surge replica of revision 2; both old ones keep serving until it is ready.
    assert states(dep) == [(1, 1, "READY"), (2, 1, "READY"), (3, 2, "PENDING")]
    scheduler.schedule()
    r3 = dep.replica_set.get(number=3)
    assert (
        "--max-batch-size" in r3.job.args
        and r3.job.args[r3.job.args.index("--max-batch-size") + 1] == "4"
    )
    ready(r3)
    controller.reconcile_all()
    # r3 ready: one old replica drains (its job is cancelled), r4 starts.
    assert states(dep) == [(1, 1, "DRAINING"), (2, 1, "READY"), (3, 2, "READY"), (4, 2, "PENDING")]
    old = Job.objects.get(replica__number=1, replica__deployment=dep)
    assert old.attempts.get().stop_requested == "cancel"
    lifecycle.finish_node(plans[0].node_id, plans[0].claim, 0)
    scheduler.schedule()
    ready(dep.replica_set.get(number=4))
    controller.reconcile_all()
    lifecycle.finish_node(plans[1].node_id, plans[1].claim, 0)
    controller.reconcile_all()
    dep.refresh_from_db()
    assert states(dep) == [(3, 2, "READY"), (4, 2, "READY")] and dep.state == "READY"
    text = " | ".join(dep.events.order_by("id").values_list("message", flat=True))
    assert "Rolling out revision 2" in text and "a replica of the new revision is ready" in text


def test_deleting_drains_every_replica_then_the_deployment_is_gone(cast, api, version):
    add_host("cpu-1", cpu_slots=4)
    dep_id = create(api, cast.bob, name="chat", replicas=1).json()["id"]
    controller.reconcile_all()
    scheduler.schedule()
    dep = Deployment.objects.get(pk=dep_id)
    plan = ready(dep.replica_set.get())
    controller.reconcile_all()
    assert api(cast.bob).delete(f"{URL}{dep_id}/").status_code == 202
    assert api(cast.bob).get(f"{URL}{dep_id}/").status_code == 200  # still draining
    controller.reconcile_all()
    assert states(dep) == [(1, 1, "DRAINING")]
    lifecycle.finish_node(plan.node_id, plan.claim, 0)
    controller.reconcile_all()
    dep.refresh_from_db()
    assert dep.state == "DELETED" and api(cast.bob).get(f"{URL}{dep_id}/").status_code == 404
    # The name is free again.
    assert create(api, cast.bob, name="chat").status_code == 201


def test_a_replica_that_never_starts_marks_its_revision_broken(cast, api, version, settings):
    settings.SERVING_REPLICA_MAX_RESTARTS = 0
    add_host("cpu-1", cpu_slots=4)
    dep_id = create(api, cast.bob, name="chat", replicas=1).json()["id"]
    controller.reconcile_all()
    scheduler.schedule()
    dep = Deployment.objects.get(pk=dep_id)
    [node] = AttemptNode.objects.filter(attempt__job__replica__deployment=dep)
    plan = lifecycle.claim_node(node.attempt_id, node.rank, node.worker_name)
    lifecycle.finish_node(plan.node_id, plan.claim, 1, "node 0: the model has no weights")
    controller.reconcile_all()
    controller.reconcile_all()
    dep.refresh_from_db()
    assert dep.state == "FAILED" and "no weights" in dep.reason
    assert dep.replica_set.count() == 1  # no crash loop of new replicas


def test_the_canary_takes_its_share_and_promotion_replaces_the_rest(cast, api, version):
    add_host("cpu-1", cpu_slots=8)
    dep_id = create(api, cast.bob, name="chat", replicas=2).json()["id"]
    controller.reconcile_all()
    scheduler.schedule()
    dep = Deployment.objects.get(pk=dep_id)
    for r in dep.replica_set.all():
        ready(r)
    controller.reconcile_all()
    body = {"canary": {"percent": 30, "max_wait_ms": 5}}
    started = api(cast.bob).patch(f"{URL}{dep_id}/", body, format="json")
    assert started.status_code == 200, started.content
    assert started.json()["canary"]["percent"] == 30
    controller.reconcile_all()
    assert states(dep) == [(1, 1, "READY"), (2, 1, "READY"), (3, 2, "PENDING")]
    again = api(cast.bob).patch(f"{URL}{dep_id}/", {"max_batch_size": 2}, format="json")
    assert again.status_code == 409 and "canary" in again.json()["detail"]
    promoted = api(cast.bob).post(f"{URL}{dep_id}/promote/")
    assert promoted.json()["revision"]["number"] == 2 and promoted.json()["canary"] is None
    controller.reconcile_all()
    assert next(s for s in states(dep) if s[1] == 2)[0] == 3
    assert api(cast.bob).post(f"{URL}{dep_id}/rollback/").status_code == 409


def test_the_autoscaler_follows_the_load_with_its_delays():
    config = {"target_ongoing_requests": 2, "upscale_delay": 3, "downscale_delay": 10}
    memory: dict = {}

    def step(current, ongoing, now, low=1, high=4, served=0.0, woken=False, settled=True):
        nonlocal memory
        d = autoscale.decide(
            current=current, low=low, high=high, ongoing=ongoing, served=served,
            config=config, memory=memory, now=now, woken=woken, settled=settled,
        )  # fmt: skip
        memory = d.memory
        return d.replicas

    assert step(1, 7, 0) == 1  # asks for 4, but not yet for upscale_delay
    assert step(1, 7, 2) == 1
    assert step(1, 7, 3) == 4
    assert step(4, 9, 4) == 4  # capped at max
    assert step(4, 2, 5) == 4  # asks for 1 ...
    assert step(4, 2, 14) == 4
    assert step(4, 2, 15.5) == 1  # ... for downscale_delay
    # Scale to zero after downscale_delay without requests; a request wakes it.
    memory = {}
    assert step(1, 0, 100, low=0) == 1
    assert step(1, 0, 109, low=0) == 1
    assert step(1, 0, 110.5, low=0) == 0
    assert step(0, 0, 200, low=0) == 0
    assert step(0, 0, 201, low=0, woken=True) == 1
    # While its replica loads, the load is unknown: it never goes back to zero, and idle
    # time counts from when the replica is ready.
    assert step(1, 0, 230, low=0, settled=False) == 1
    assert step(1, 0, 235, low=0) == 1
    assert step(1, 0, 240.5, low=0) == 0


def test_a_deployment_scales_by_preempting_low_priority_training(cast, api, version, submit):
    add_host("cpu-1", cpu_slots=2)
    training = submit(user=cast.bob, priority="low", resources={"procs_per_node": 2})
    assert len(scheduler.schedule().placed) == 1
    dep_id = create(api, cast.bob, name="chat", replicas=1, priority="high").json()["id"]
    controller.reconcile_all()
    decision = scheduler.schedule()
    assert decision.preempted, "the low-priority training job should be asked to stop"
    training.refresh_from_db()
    assert training.attempts.get().stop_requested == "preempt"
    assert Deployment.objects.get(pk=dep_id).replica_set.get().job.state == JobState.PENDING
    assert timezone.now()


@pytest.mark.django_db(transaction=True)
def test_a_members_websocket_gets_a_snapshot_and_others_are_refused(cast, api, version):
    from channels.testing import WebsocketCommunicator

    from controlplane.asgi import application
    from controlplane.tenancy.services import Actor, create_token
    from tests.asyncio_helpers import run

    add_host("cpu-1", cpu_slots=4)
    dep_id = create(api, cast.bob, name="chat", replicas=1).json()["id"]

    async def connect(raw: str):
        ws = WebsocketCommunicator(
            application,
            f"/ws/deployments/{dep_id}/",
            headers=[(b"authorization", f"Bearer {raw}".encode())],
        )
        connected, code = await ws.connect()
        frame = await ws.receive_json_from(timeout=5) if connected else None
        await ws.disconnect()
        return connected, code, frame

    tokens = {u: create_token(Actor.system(), u, "ws")[1] for u in (cast.bob, cast.dave)}
    connected, _, frame = run(lambda: connect(tokens[cast.bob]))
    assert connected and frame["type"] == "snapshot"
    assert frame["deployment"]["name"] == "chat" and frame["events"]
    connected, code, _ = run(lambda: connect(tokens[cast.dave]))
    assert not connected and code == 4404


def test_energy_per_1k_tokens_and_the_telemetry_label_name_the_deployment(cast, api, version):
    from monitoring import attribution
    from monitoring.models import JobUsage
    from serving.deployments import energy, stats

    worker = add_host("cpu-1", cpu_slots=4)
    dep_id = create(api, cast.bob, name="chat", replicas=2).json()["id"]
    controller.reconcile_all()
    scheduler.schedule()
    dep = Deployment.objects.get(pk=dep_id)
    for replica in dep.replica_set.order_by("number"):
        ready(replica)
    one, two = dep.replica_set.order_by("number")
    now = timezone.now()
    usage = {"worker_name": "cpu-1", "first_seen": now, "last_seen": now}
    JobUsage.objects.create(job=one.job, cpu_seconds=3.0, **usage)
    JobUsage.objects.create(job=two.job, cpu_seconds=1.0, **usage)

    # CPU replicas: no energy counter, so CPU-seconds per 1k generated tokens, and it says so.
    figures = energy.energy(dep_id, tokens=2000)
    assert figures["joules_per_1k_tokens"] is None and figures["cpu_seconds_per_1k_tokens"] == 2.0
    assert figures["basis"] == "cpu" and "no energy counter" in figures["basis_text"]
    assert energy.energy(dep_id, tokens=0)["cpu_seconds_per_1k_tokens"] is None
    # A GPU replica's joules (from the NVML counter) count per 1k tokens.
    JobUsage.objects.filter(job=one.job).update(joules=500.0, gpu_seconds=10.0)
    gpu = energy.energy(dep_id, tokens=2000)
    assert gpu["joules_per_1k_tokens"] == 250.0 and gpu["basis"] == "counter"

    # The API's single deployment carries it, with the tokens the replicas reported.
    stats.update(dep_id, {one.pk: stats.Sample(time=1.0, counters={"tokens": 4000.0})}, 2, 1.0)
    body = api(cast.bob).get(f"{URL}{dep_id}/").json()
    assert body["energy"]["tokens"] == 4000.0 and body["energy"]["joules_per_1k_tokens"] == 125.0
    assert api(cast.bob).get(URL).json()["results"][0]["energy"] is None  # not in lists

    # The telemetry's label of each replica's job names its deployment.
    labels = {h.id: h.label() for h in attribution.holdings(worker.pk)}
    assert labels[one.job_id]["deployment"] == {"id": dep_id, "name": "chat", "replica": 1}
    assert labels[two.job_id]["deployment"]["replica"] == 2


def test_prefix_affinity_is_a_revisions_flag_the_routing_table_carries(cast, api, version):
    from serving.deployments import routing

    add_host("cpu-1", cpu_slots=4)
    dep_id = create(api, cast.bob, name="chat", prefix_affinity=True).json()["id"]
    other = create(api, cast.bob, name="plain").json()["id"]
    routes = routing.load_table()[cast.alpha.pk]
    assert routes["chat"].prefix_affinity and not routes["plain"].prefix_affinity
    body = api(cast.bob).get(f"{URL}{dep_id}/").json()
    assert body["config"]["prefix_affinity"] is True
    assert api(cast.bob).get(f"{URL}{other}/").json()["config"]["prefix_affinity"] is False
