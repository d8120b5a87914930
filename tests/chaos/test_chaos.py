"""A short chaos run (the long one: ``python -m tests.chaos.run``).

It takes about 90 s, so ``make test`` leaves it to CI, which runs it on its own on both
databases (``.ci/run``): ``CP_CHAOS=1 make test PYTEST_ARGS=tests/chaos``.
"""

from __future__ import annotations

import os

import pytest

from tests.chaos.run import Plan, run, table

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.environ.get("CP_CHAOS") != "1", reason="CI runs it on its own: set CP_CHAOS=1"
    ),
]


def test_jobs_survive_killed_and_stalled_hosts_a_killed_broker_and_a_cancel_storm():
    plan = Plan(jobs=30, worker_kills=2, broker_kills=1, stalls=1, cancels=5, crashes=3)
    figures = run(plan)
    print(table(figures))
    assert figures.clean, table(figures)
    assert figures.succeeded == plan.jobs - plan.cancels - plan.crashes
    assert figures.failed_as_meant == plan.crashes and figures.cancelled == plan.cancels
    assert figures.worker_kills == 2 and figures.stalls == 1
