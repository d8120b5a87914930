"""A short chaos run in every ``make test`` (the long one: ``python -m tests.chaos.run``)."""

from __future__ import annotations

import pytest

from tests.chaos.run import Plan, run, table

pytestmark = pytest.mark.e2e


def test_jobs_survive_killed_and_stalled_hosts_a_killed_broker_and_a_cancel_storm():
    plan = Plan(jobs=30, worker_kills=2, broker_kills=1, stalls=1, cancels=5, crashes=3)
    figures = run(plan)
    print(table(figures))
    assert figures.clean, table(figures)
    assert figures.succeeded == plan.jobs - plan.cancels - plan.crashes
    assert figures.failed_as_meant == plan.crashes and figures.cancelled == plan.cancels
    assert figures.worker_kills == 2 and figures.stalls == 1
