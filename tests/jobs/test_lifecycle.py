"""An attempt's life on the database side: claims and fencing, exits and restarts,
the reaper, max_runtime, cancel, and what a job produces (logs, checkpoints)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from controlplane.cluster import services as cluster
from controlplane.cluster.models import Worker
from controlplane.tenancy.services import Actor
from jobs import lifecycle, outputs, scheduler, services, storage
from jobs.models import Attempt, AttemptNode, Checkpoint, Job, LogChunk, Metric, Reservation
from jobs.states import AttemptState, JobState, StopReason
from tests.conftest import add_host

pytestmark = pytest.mark.django_db


@pytest.fixture
def cpu_host(db):
    return add_host("cpu-1", cpu_slots=4)


def place(job: Job) -> list[AttemptNode]:
    scheduler.schedule()
    return list(AttemptNode.objects.filter(attempt__job=job, state="WAITING").order_by("rank"))


def claim(node: AttemptNode) -> lifecycle.NodePlan:
    plan = lifecycle.claim_node(node.attempt_id, node.rank, node.worker_name)
    assert plan is not None
    return plan


def test_a_duplicate_start_message_does_nothing(cpu_host, submit):
    job = submit()
    [node] = place(job)
    first = claim(node)
    assert lifecycle.claim_node(node.attempt_id, node.rank, node.worker_name) is None
    job.refresh_from_db()
    assert job.state == JobState.RUNNING
    assert first.env == {} and first.entrypoint[:2] == ["python", "-m"]


def test_a_start_message_for_another_host_is_refused(cpu_host, submit):
    [node] = place(submit())
    assert lifecycle.claim_node(node.attempt_id, node.rank, "someone-else") is None


def test_success_frees_the_devices(cpu_host, submit):
    job = submit()
    plan = claim(place(job)[0])
    assert Reservation.objects.count() == 1
    lifecycle.finish_node(plan.node_id, plan.claim, 0)
    job.refresh_from_db()
    assert (job.state, job.exit_code) == (JobState.SUCCEEDED, 0)
    assert Reservation.objects.count() == 0


def test_a_job_that_always_crashes_ends_failed_after_max_restarts(cpu_host, submit, settings):
    settings.JOB_RESTART_BACKOFF = 2.0
    settings.JOB_RESTART_BACKOFF_MAX = 3.0
    job = submit(max_restarts=2)
    waits = []
    for _ in range(3):
        plan = claim(place(job)[0])
        lifecycle.finish_node(plan.node_id, plan.claim, 1)
        job.refresh_from_db()
        if job.state == JobState.PENDING:
            # A crash loop does not spin: the restart waits, doubling up to the cap.
            assert scheduler.schedule().placed == [] and " s" in job.reason
            waits.append(round((job.not_before - timezone.now()).total_seconds()))
            Job.objects.filter(pk=job.pk).update(not_before=timezone.now())
    assert waits == [2, 3]
    job.refresh_from_db()
    assert job.state == JobState.FAILED and job.restarts == 2
    assert "no restarts left" in job.reason and job.exit_code == 1
    assert list(job.attempts.values_list("state", flat=True)) == [AttemptState.FAILED] * 3
    assert scheduler.schedule().placed == []  # not in a loop


def test_a_lost_worker_requeues_the_job_to_resume_from_its_checkpoint(cpu_host, submit):
    job = submit()
    plan = claim(place(job)[0])
    ckpt = storage.checkpoint_root(job.pk) / "step-7"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"x" * 10)
    outputs.record_checkpoint(job.pk, plan.attempt_id, 7, str(ckpt))
    AttemptNode.objects.update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert lifecycle.reap() == 1
    job.refresh_from_db()
    attempt = Attempt.objects.get(job=job, number=1)
    assert attempt.state == AttemptState.LOST and "lease" in attempt.reason
    assert (job.state, job.restarts) == (JobState.PENDING, 1)
    # The stale run is fenced: nothing it says counts any more.
    assert lifecycle.renew(plan.node_id, plan.claim).held is False
    lifecycle.finish_node(plan.node_id, plan.claim, 0)
    assert Job.objects.get(pk=job.pk).state == JobState.PENDING
    # The host that lost the lease is suspect: nothing goes there until it heartbeats.
    assert place(job) == []
    assert cluster.heartbeat("cpu-1")
    second = claim(place(job)[0])
    assert second.resume_from == str(ckpt) and second.attempt == 2


def test_a_stale_attempt_can_write_nothing_once_it_was_given_up_on(cpu_host, submit):
    job = submit()
    plan = claim(place(job)[0])
    fence = (plan.node_id, plan.claim)
    ckpt = storage.checkpoint_root(job.pk) / "step-3"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"x")
    model = storage.job_root(job.pk) / "final"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    assert outputs.record_logs(job.pk, 1, 0, "live\n", fence=fence) is not None
    assert outputs.record_metrics(job.pk, 1, 1, {"loss": 1.0}, fence=fence)
    AttemptNode.objects.update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert lifecycle.reap() == 1
    # What the frozen run says when it wakes up is refused, write by write.
    assert outputs.record_logs(job.pk, 1, 0, "late\n", fence=fence) is None
    assert outputs.record_metrics(job.pk, 1, 2, {"loss": 0.5}, fence=fence) == []
    assert outputs.record_checkpoint(job.pk, plan.attempt_id, 3, str(ckpt), fence=fence) is None
    assert not outputs.record_model(job.pk, str(model), fence=fence)
    assert list(LogChunk.objects.filter(job=job).values_list("text", flat=True)) == ["live\n"]
    assert list(Metric.objects.filter(job=job).values_list("step", flat=True)) == [1]
    assert not Checkpoint.objects.filter(job=job).exists()
    job.refresh_from_db()
    assert job.model_path == "" and job.progress["step"] == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="row locks and session timeouts: PostgreSQL"
)
def test_a_host_frozen_inside_a_transaction_cannot_keep_its_jobs_from_the_reaper(
    cpu_host, submit, settings
):
    """A worker SIGSTOPped mid-write holds its node's row lock with a live connection: the
    reaper must still give its jobs up (the others at once, that one once PostgreSQL ended
    the frozen session), not wait for it forever."""
    settings.DB_IDLE_IN_TRANSACTION_TIMEOUT = 5.0
    first, second = submit(name="held"), submit(name="free")
    scheduler.schedule()
    plans = {
        n.attempt.job_id: claim(n) for n in AttemptNode.objects.select_related("attempt").all()
    }
    held = plans[first.pk]
    locked, wake, woke = threading.Event(), threading.Event(), []

    def frozen_worker() -> None:
        try:
            with transaction.atomic():
                assert lifecycle.holds((held.node_id, held.claim))  # locks the node's row
                locked.set()
                wake.wait(20)  # frozen, idle in its transaction
                outputs.record_logs(first.pk, 1, 0, "late\n", fence=(held.node_id, held.claim))
        except Exception as exc:  # its session was ended while it slept
            woke.append(exc)
        finally:
            connection.close()

    AttemptNode.objects.update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    thread = threading.Thread(target=frozen_worker)
    thread.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        assert lifecycle.reap() == 1  # the free one; the held one is skipped, not waited on
        assert time.monotonic() - started < 4
        assert Job.objects.get(pk=second.pk).state == JobState.PENDING
        while Job.objects.get(pk=first.pk).state != JobState.PENDING:
            assert time.monotonic() - started < 10, "the frozen host's job was never given up"
            time.sleep(0.2)
            lifecycle.reap()
    finally:
        wake.set()
        thread.join(10)
    assert woke and not LogChunk.objects.filter(job=first).exists()
    assert Attempt.objects.get(job=first).state == AttemptState.LOST


def test_a_node_waiting_on_a_host_that_went_away_is_placed_again_at_once(submit):
    add_host("cpu-1", cpu_slots=1)
    job = submit()
    [node] = place(job)
    add_host("cpu-2", cpu_slots=1)
    # cpu-1 stops heartbeating before it claimed the node: no waiting for the start timeout.
    Worker.objects.filter(name="cpu-1").update(
        last_heartbeat_at=timezone.now() - timedelta(seconds=3600)
    )
    assert lifecycle.reap() == 1
    job.refresh_from_db()
    assert (job.state, job.restarts) == (JobState.PENDING, 0)  # it never ran: no restart
    assert "cpu-1 went offline" in Attempt.objects.get(job=job).reason
    [again] = place(job)
    assert again.worker_name == "cpu-2"
    assert lifecycle.claim_node(node.attempt_id, node.rank, "cpu-1") is None  # fenced


def test_an_unclaimed_start_message_is_sent_again(cpu_host, submit, settings):
    settings.JOB_START_RESEND = 2.0
    broker = redis.Redis.from_url(settings.BROKER_URL)
    queue = "host.cpu-1"
    [node] = place(submit())  # (its first start message goes out when the pass commits)
    before = broker.llen(queue)
    assert scheduler.resend_unclaimed() == 0  # not due yet
    AttemptNode.objects.update(sent_at=timezone.now() - timedelta(seconds=3))
    assert scheduler.resend_unclaimed() == 1
    assert broker.llen(queue) == before + 1
    claim(node)  # the duplicate finds the node claimed
    assert lifecycle.claim_node(node.attempt_id, node.rank, node.worker_name) is None
    AttemptNode.objects.update(sent_at=timezone.now() - timedelta(seconds=3))
    assert scheduler.resend_unclaimed() == 0  # claimed: nothing more to send


def test_a_peer_that_failed_because_its_host_was_lost_blames_that_host(submit):
    for name in ("cpu-1", "cpu-2"):
        add_host(name, cpu_slots=1)
    job = submit(resources={"nodes": 2, "gpus_per_node": 0}, max_restarts=1)
    first, second = (claim(n) for n in place(job))
    lost_host = AttemptNode.objects.get(pk=second.node_id).worker_name
    # Node 0's collective broke when node 1's host died: it exits 1 first.
    lifecycle.finish_node(first.node_id, first.claim, 1)
    AttemptNode.objects.filter(pk=second.node_id).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert lifecycle.reap() == 1
    attempt = Attempt.objects.get(job=job)
    assert attempt.state == AttemptState.LOST
    assert attempt.reason.startswith(f"node 1 on {lost_host} stopped renewing its lease")
    assert "node 0" in attempt.reason


@override_settings(JOB_START_TIMEOUT=5)
def test_an_attempt_whose_start_message_was_lost_is_retried(cpu_host, submit):
    job = submit()
    place(job)
    Attempt.objects.update(created_at=timezone.now() - timedelta(seconds=6))
    assert lifecycle.reap() == 1
    job.refresh_from_db()
    assert (job.state, job.restarts) == (JobState.PENDING, 0)  # it never ran: no restart
    attempt = Attempt.objects.get(job=job)
    assert attempt.state == AttemptState.LOST and "never started" in attempt.reason


def test_max_runtime_stops_the_job_and_fails_it_without_retry(cpu_host, submit):
    job = submit(max_runtime="1m")
    plan = claim(place(job)[0])
    Attempt.objects.update(started_at=timezone.now() - timedelta(seconds=61))
    lifecycle.reap()
    assert lifecycle.renew(plan.node_id, plan.claim).stop == StopReason.RUNTIME
    lifecycle.finish_node(plan.node_id, plan.claim, 143)
    job.refresh_from_db()
    assert job.state == JobState.FAILED and "max_runtime" in job.reason and job.restarts == 0


def test_cancel_pending_scheduled_and_running_jobs(cast, cpu_host, submit):
    actor = Actor(user=cast.bob)
    pending = submit()
    services.cancel_job(actor, pending)
    assert Job.objects.get(pk=pending.pk).state == JobState.CANCELLED

    scheduled = submit()
    place(scheduled)
    services.cancel_job(actor, scheduled)
    assert Job.objects.get(pk=scheduled.pk).state == JobState.CANCELLED
    assert Reservation.objects.count() == 0

    running = submit()
    plan = claim(place(running)[0])
    services.cancel_job(actor, running)
    assert Job.objects.get(pk=running.pk).state == JobState.RUNNING  # until it stops
    assert lifecycle.renew(plan.node_id, plan.claim).stop == StopReason.CANCEL
    lifecycle.finish_node(plan.node_id, plan.claim, 0)  # exited 0 on SIGTERM: still cancelled
    assert Job.objects.get(pk=running.pk).state == JobState.CANCELLED


def test_a_failed_node_stops_the_others_and_the_attempt_ends_when_they_are_gone(cast, submit):
    add_host("n1", cpu_slots=1)
    add_host("n2", cpu_slots=1)
    job = submit(resources={"nodes": 2}, max_restarts=1)
    first, second = (claim(n) for n in place(job))
    lifecycle.finish_node(second.node_id, second.claim, 3)
    attempt = Attempt.objects.get(job=job)
    assert attempt.state == AttemptState.RUNNING  # node 0 still has processes
    assert lifecycle.renew(first.node_id, first.claim).stop == StopReason.PEER_FAILED
    lifecycle.finish_node(first.node_id, first.claim, 143)
    attempt.refresh_from_db()
    job.refresh_from_db()
    assert attempt.state == AttemptState.FAILED and attempt.exit_code == 3
    assert job.state == JobState.PENDING and job.restarts == 1


@override_settings(JOB_LOG_CAP_BYTES=1024)
def test_logs_are_capped_with_one_truncation_marker(cpu_host, submit):
    job = submit()
    for _ in range(3):
        outputs.record_logs(job.pk, 1, 0, "x" * 700)
    texts = list(LogChunk.objects.filter(job=job).values_list("text", flat=True))
    assert len(texts) == 2
    assert len("".join(texts).replace("\n", "").split("[")[0]) == 1024
    assert "log truncated" in texts[-1]
    assert Job.objects.get(pk=job.pk).log_truncated


def test_only_the_last_k_checkpoints_are_kept(cpu_host, submit):
    job = submit(checkpoint={"keep": 2})
    root = storage.checkpoint_root(job.pk)
    paths = []
    for step in (10, 20, 30):
        path = root / f"step-{step}"
        path.mkdir(parents=True)
        (path / "state.safetensors").write_bytes(b"0" * step)
        paths.append(path)
        outputs.record_checkpoint(job.pk, None, step, str(path))
    assert list(Checkpoint.objects.filter(job=job).values_list("step", "size_bytes")) == [
        (30, 30),
        (20, 20),
    ]
    assert not paths[0].exists() and paths[1].exists() and paths[2].exists()
    # A path outside the job's checkpoint directory is not registered.
    assert outputs.record_checkpoint(job.pk, None, 40, str(Path("/tmp"))) is None
