"""The scheduler's decisions: gang placement, priorities, fair share, quotas, the head job's
reservation, preemption, and the reasons a waiting job shows."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from controlplane.tenancy.models import Project
from jobs import lifecycle, scheduler
from jobs.models import Attempt, AttemptNode, Job, Reservation
from jobs.states import AttemptState, JobState, StopReason
from tests.conftest import add_host

pytestmark = pytest.mark.django_db


def gpus_of(job: Job) -> dict[str, list[int]]:
    nodes = AttemptNode.objects.filter(attempt__job=job).order_by("rank")
    return {n.worker_name: n.gpu_indices for n in nodes}


_claims: dict[int, str] = {}


def start(job: Job) -> None:
    """Claim a placed job's nodes, as its workers would."""
    for node in AttemptNode.objects.filter(attempt__job=job, state="WAITING"):
        plan = lifecycle.claim_node(node.attempt_id, node.rank, node.worker_name)
        _claims[plan.node_id] = plan.claim


def finish(job: Job, code: int = 0) -> None:
    """Let a placed job's processes exit (what its workers report), freeing its devices."""
    start(job)
    for node in AttemptNode.objects.filter(attempt__job=job, state="RUNNING"):
        lifecycle.finish_node(node.pk, _claims[node.pk], code)


def test_a_gang_is_placed_all_at_once_on_distinct_hosts(hosts, submit):
    job = submit(resources={"nodes": 2, "gpus_per_node": 8})
    decision = scheduler.schedule()
    assert len(decision.placed) == 1
    job.refresh_from_db()
    assert job.state == JobState.SCHEDULED
    assert gpus_of(job) == {"gpu-a": list(range(8)), "gpu-b": list(range(8))}
    assert Reservation.objects.filter(kind="gpu").count() == 16


def test_best_fit_keeps_big_hosts_free_for_big_jobs(hosts, submit):
    small = submit(resources={"gpus_per_node": 4})
    scheduler.schedule()
    assert list(gpus_of(small)) == ["gpu-c"]
    big = submit(resources={"nodes": 2, "gpus_per_node": 8})
    scheduler.schedule()
    big.refresh_from_db()
    assert big.state == JobState.SCHEDULED


def test_a_job_that_cannot_fit_waits_and_says_why(hosts, submit):
    first = submit(resources={"nodes": 2, "gpus_per_node": 8})
    second = submit(resources={"gpus_per_node": 8})
    scheduler.schedule()
    second.refresh_from_db()
    assert first.attempts.count() == 1
    assert second.state == JobState.PENDING
    assert second.reason == "Waiting for a host with 8 free GPUs."
    detail = second.reason
    finish(first)
    scheduler.schedule()
    second.refresh_from_db()
    assert second.state == JobState.SCHEDULED and detail


def test_higher_priority_goes_first(hosts, submit):
    low = submit(name="low", priority="low", resources={"nodes": 2, "gpus_per_node": 8})
    high = submit(name="high", priority="high", resources={"nodes": 2, "gpus_per_node": 8})
    scheduler.schedule()
    assert high.attempts.count() == 1 and low.attempts.count() == 0


def test_fair_share_alternates_between_projects(cast, submit):
    add_host("solo", gpus=2)
    from controlplane.tenancy.models import Membership

    Membership.objects.create(user=cast.bob, project=cast.beta, role="member")
    a1 = submit(project="alpha", resources={"gpus_per_node": 1})
    submit(project="alpha", resources={"gpus_per_node": 1})
    b1 = submit(project="beta", resources={"gpus_per_node": 1})
    scheduler.schedule()
    placed = set(Job.objects.filter(state=JobState.SCHEDULED).values_list("pk", flat=True))
    assert placed == {a1.pk, b1.pk}  # not both of alpha's older jobs


def test_quotas_hold_and_do_not_block_other_projects(cast, submit):
    add_host("solo", gpus=8)
    cast.alpha.max_gpus = 2
    cast.alpha.max_concurrent_jobs = 5
    cast.alpha.save()
    from controlplane.tenancy.models import Membership

    Membership.objects.create(user=cast.bob, project=cast.beta, role="member")
    a1 = submit(project="alpha", resources={"gpus_per_node": 2})
    a2 = submit(project="alpha", resources={"gpus_per_node": 1})
    b1 = submit(project="beta", resources={"gpus_per_node": 4})
    scheduler.schedule()
    a2.refresh_from_db()
    assert a1.attempts.count() == 1 and b1.attempts.count() == 1
    assert a2.state == JobState.PENDING
    assert "uses 2 of 2 GPUs" in a2.reason
    cast.alpha.max_gpus = None
    cast.alpha.max_concurrent_jobs = 1
    cast.alpha.save()
    scheduler.schedule()
    a2.refresh_from_db()
    assert a2.state == JobState.PENDING and "1 of 1 concurrent jobs" in a2.reason


def test_the_head_job_keeps_its_host_and_small_jobs_backfill_elsewhere(cast, submit):
    add_host("one", gpus=4)
    add_host("two", gpus=4)
    h1 = submit(name="h1", resources={"gpus_per_node": 3})
    h2 = submit(name="h2", resources={"gpus_per_node": 2})
    scheduler.schedule()
    assert (list(gpus_of(h1)), list(gpus_of(h2))) == (["one"], ["two"])
    head = submit(name="head", resources={"gpus_per_node": 4})
    needs_two = submit(name="needs-two", resources={"gpus_per_node": 2})
    needs_one = submit(name="needs-one", resources={"gpus_per_node": 1})
    scheduler.schedule()
    for job in (head, needs_two, needs_one):
        job.refresh_from_db()
    # "two" (2 free) is set aside for the head job: the 2-GPU job may not take it...
    assert head.state == JobState.PENDING
    assert needs_two.state == JobState.PENDING
    assert f"behind job #{head.pk}" in needs_two.reason
    # ...while a job that fits elsewhere still runs (backfill on other hosts).
    assert needs_one.state == JobState.SCHEDULED and list(gpus_of(needs_one)) == ["one"]
    # When the reserved host drains, the head job gets it before anyone else.
    finish(h2)
    scheduler.schedule()
    head.refresh_from_db()
    needs_two.refresh_from_db()
    assert head.state == JobState.SCHEDULED and list(gpus_of(head)) == ["two"]
    assert needs_two.state == JobState.PENDING


def test_high_priority_preempts_lower_priority_jobs(cast, submit):
    add_host("solo", gpus=8)
    low = submit(name="low", priority="low", resources={"gpus_per_node": 6})
    scheduler.schedule()
    start(low)
    high = submit(name="high", priority="high", resources={"gpus_per_node": 4})
    decision = scheduler.schedule()
    attempt = Attempt.objects.get(job=low)
    assert decision.preempted == [attempt.pk]
    assert attempt.stop_requested == StopReason.PREEMPT
    high.refresh_from_db()
    assert high.state == JobState.PENDING and f"#{low.pk}" in high.reason
    # While the victim stops, nothing more is preempted for the same job.
    assert scheduler.schedule().preempted == []
    finish(low)
    low.refresh_from_db()
    assert (low.state, low.preemptions, low.restarts) == (JobState.PENDING, 1, 0)
    assert Attempt.objects.get(job=low).state == AttemptState.PREEMPTED
    scheduler.schedule()
    high.refresh_from_db()
    assert high.state == JobState.SCHEDULED


def test_a_project_may_not_ask_for_more_priority_than_its_operators_allow(cast, api, submit):
    add_host("solo", gpus=8)
    refused = api(cast.bob).post(
        "/api/v1/jobs/",
        {"project": "beta", "name": "x", "priority": "high", "entrypoint": ["python", "-m",
         "workers.recipes.causal_lm"]},
    )  # fmt: skip
    assert refused.status_code in (400, 404)
    refused = api(cast.dave).post(
        "/api/v1/jobs/",
        {"project": "beta", "name": "x", "priority": "high", "entrypoint": ["python", "-m",
         "workers.recipes.causal_lm"]},
    )  # fmt: skip
    assert refused.status_code == 400
    assert "allows priority up to normal" in refused.json()["priority"][0]
    # A project admin cannot raise it; an operator can.
    denied = api(cast.dave).patch(f"/api/v1/projects/{cast.beta.pk}/", {"max_priority": "high"})
    assert denied.status_code == 403 and "operators" in denied.json()["detail"]
    raised = api(cast.olga).patch(f"/api/v1/projects/{cast.beta.pk}/", {"max_priority": "high"})
    assert raised.status_code == 200 and raised.json()["max_priority"] == "high"
    high = submit(user=cast.dave, project="beta", priority="high", resources={"gpus_per_node": 1})
    assert high.priority == 2


def test_high_priority_preempts_another_project_only_above_its_fair_share(cast, submit):
    Project.objects.filter(pk=cast.beta.pk).update(max_priority=2)
    add_host("solo", gpus=8)
    # alpha runs on 4 of 8 GPUs, beta on 2: each is within its share (8 / 2 projects).
    fair = submit(name="fair", priority="low", resources={"gpus_per_node": 4})
    beta_small = submit(user=cast.dave, project="beta", name="b1", resources={"gpus_per_node": 2})
    scheduler.schedule()
    start(fair)
    start(beta_small)
    greedy = submit(user=cast.dave, project="beta", name="hi", priority="high",
                    resources={"gpus_per_node": 6})  # fmt: skip
    assert scheduler.schedule().preempted == []  # alpha's low job is within its share
    greedy.refresh_from_db()
    assert greedy.state == JobState.PENDING
    # alpha takes more than its share: now its low-priority work may give way.
    finish(beta_small)
    Job.objects.filter(pk=greedy.pk).update(state=JobState.CANCELLED)
    more = submit(name="more", priority="low", resources={"gpus_per_node": 4})
    scheduler.schedule()
    start(more)
    high = submit(user=cast.dave, project="beta", name="hi2", priority="high",
                  resources={"gpus_per_node": 4})  # fmt: skip
    decision = scheduler.schedule()
    assert decision.preempted == [Attempt.objects.get(job=more).pk]
    high.refresh_from_db()
    assert f"#{more.pk}" in high.reason


def test_low_priority_never_preempts(cast, submit):
    add_host("solo", gpus=8)
    submit(name="normal", resources={"gpus_per_node": 8})
    scheduler.schedule()
    submit(name="low", priority="low", resources={"gpus_per_node": 8})
    assert scheduler.schedule().preempted == []


def test_cpu_jobs_use_cpu_slots(cast, submit):
    add_host("cpu", cpu_slots=2)
    a = submit(resources={"procs_per_node": 2})
    b = submit(resources={"procs_per_node": 1})
    scheduler.schedule()
    a.refresh_from_db()
    b.refresh_from_db()
    assert a.state == JobState.SCHEDULED and b.state == JobState.PENDING
    assert "CPU slot" in b.reason


@pytest.mark.django_db(transaction=True)
def test_two_schedulers_at_once_never_double_book(cast, submit):
    add_host("solo", gpus=8)
    for i in range(12):
        submit(name=f"j{i}", resources={"gpus_per_node": 1})
    barrier = threading.Barrier(2)
    errors = []

    def run():
        try:
            barrier.wait()
            scheduler.schedule()
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    indices = list(Reservation.objects.values_list("index", flat=True))
    assert len(indices) == len(set(indices)) == 8
    assert Job.objects.filter(state=JobState.SCHEDULED).count() == 8


def test_a_small_job_behind_many_big_ones_of_its_project_still_backfills(cast, submit):
    """Shape queues: twenty jobs that cannot fit stop their queue at the first of them, and
    the 1-GPU job queued after them in the same project is still placed."""
    add_host("a", gpus=8)
    add_host("b", gpus=4)
    add_host("c", gpus=4)
    submit(name="hold", resources={"gpus_per_node": 8})
    scheduler.schedule()  # "hold" takes a; b or c is set aside for the first big job
    big = [submit(name=f"big{i}", resources={"gpus_per_node": 8}) for i in range(20)]
    small = submit(name="small", resources={"gpus_per_node": 1})
    decision = scheduler.schedule()
    small.refresh_from_db()
    assert small.state == JobState.SCHEDULED
    assert decision.waiting == 20
    assert list(gpus_of(small)) == ["c"]
    assert [Job.objects.get(pk=b.pk).state for b in big] == [JobState.PENDING] * 20


def test_a_pass_does_not_read_the_jobs_of_a_shape_that_cannot_fit(
    cast, submit, django_assert_max_num_queries
):
    add_host("a", gpus=8)
    submit(name="hold", resources={"gpus_per_node": 8})
    scheduler.schedule()
    for i in range(300):
        submit(name=f"big{i}", resources={"gpus_per_node": 8})
    scheduler.schedule()  # the first pass gives the first jobs their reasons
    # 300 waiting jobs of one shape: the group query, the hosts, one chunk of the queue.
    with django_assert_max_num_queries(20):
        decision = scheduler.schedule()
    assert decision.waiting == 300 and not decision.placed
    last = Job.objects.order_by("-id").first()
    assert last.reason == "Waiting for the scheduler."  # never reached: its first reason
