"""Several hosts with networks of their own (tests/multihost/netns.py): a 2-node DDP job
whose nodes land in two namespaces, rendezvous at node 0's bridge address and run gloo
over the bridge; one host's link cut past the lease: it stops its workload itself, and
the job resumes from its checkpoint on the hosts that are left, never with two attempts'
processes alive at once.

Needs root and iproute2, and PostgreSQL: a host's link cut must cut it off from the
database too (a SQLite file would still be reachable through the shared filesystem), so
this runs in CI's PostgreSQL pass.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.stack import ORIGINAL_ENV, Stack
from tests.e2e.test_jobs import TERMINAL, attempts, logs, metric, submit, wait_for, wait_state
from tests.multihost.netns import Network, available

WHY_NOT = available() or (
    "" if ORIGINAL_ENV.get("DATABASE_URL", "").startswith("postgres") else
    "a cut link must cut the host off from its database: set DATABASE_URL to PostgreSQL"
)  # fmt: skip
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT)]
LEASE = 4.0


@pytest.fixture(scope="module")
def cluster():
    stack = Stack(
        fake_gpus=0,
        extra_env={
            "CP_WORKER_CPU_SLOTS": "0",  # the stack's own worker runs control tasks only
            "CP_JOB_LEASE_SECONDS": str(LEASE),
            "CP_JOB_LEASE_RENEW_INTERVAL": "0.5",
            "CP_WORKER_HEARTBEAT_INTERVAL": "0.5",
            "CP_WORKER_OFFLINE_AFTER": "2",
            "CP_JOB_START_TIMEOUT": "20",
            "CP_JOB_STOP_GRACE_SECONDS": "8",
            "CP_SCHEDULER_INTERVAL": "0.5",
        },
    )
    network = None
    try:
        stack.start()
        stack.wait_ready()
        import httpx

        minted = stack.manage("create_token", "admin", "--name", "multihost")
        assert minted.returncode == 0, minted.stderr
        stack.api = httpx.Client(
            base_url=stack.url, headers={"Authorization": f"Bearer {minted.stdout.strip()}"},
            timeout=30,
        )  # fmt: skip
        network = Network()
        database = network.forwarder.through(stack.env["DATABASE_URL"])
        redis = network.forwarder.through(stack.redis_url)
        broker = network.forwarder.through(stack.broker_url)
        tag = uuid.uuid4().hex[:4]
        for i in (1, 2, 3):
            host = network.add_host(f"m{tag}{i}")
            stack.start_worker(
                host.name,
                wrap=host.wrap(),
                CP_WORKER_ADDRESS=host.address,
                CP_WORKER_NET_IFNAME=host.interface,
                CP_WORKER_CPU_SLOTS="1",
                DATABASE_URL=database,
                REDIS_URL=redis,
                CP_BROKER_URL=broker,
            )
        names = set(network.hosts)
        wait_for(lambda: online(stack) >= names, 90, "the namespaced workers online")
        yield stack, network
    finally:
        stack.stop_workers()
        if network is not None:
            network.close()
        stack.close()


def online(stack: Stack) -> set[str]:
    workers = stack.api.get("/api/v1/workers/").json()["results"]
    return {w["name"] for w in workers if w["status"] == "online"}


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(p.split("=", 1) for p in raw.decode(errors="replace").split("\0") if "=" in p)


def trainers(network: Network) -> dict[str, list[int]]:
    """The trainer's processes on each host (by network namespace)."""
    found: dict[str, list[int]] = {}
    for name, host in network.hosts.items():
        for pid in host.pids():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(part.endswith(b"trainer.py") for part in cmdline):
                found.setdefault(name, []).append(pid)
    return found


def live_attempts(network: Network) -> set[str]:
    return {
        environ(pid).get("CP_ATTEMPT_ID", "?")
        for pids in trainers(network).values()
        for pid in pids
    }


def test_a_two_node_job_spans_namespaces_and_resumes_when_a_hosts_link_is_cut(cluster):
    stack, network = cluster
    submitted = submit(
        stack,
        name="across",
        entrypoint=["python", "trainer.py"],
        env={"STEPS": "30", "STEP_SECONDS": "0.3"},
        resources={"nodes": 2},
        max_restarts=2,
    )
    job_id = submitted["id"]

    def checkpointed() -> list | None:
        runs = attempts(stack, job_id)
        return runs if runs and runs[-1]["state"] == "RUNNING" and "step 3" in logs(
            stack, job_id
        ) else None  # fmt: skip

    started = time.monotonic()
    first = wait_for(checkpointed, 120, "the 2-node job to checkpoint")[-1]
    print(f"checkpointed at step 3 after {time.monotonic() - started:.1f} s")
    by_rank = {n["rank"]: n["worker"] for n in first["nodes"]}
    assert len(set(by_rank.values())) == 2, by_rank
    # Each rank runs in its own host's namespace; they met at node 0's bridge address
    # and gloo runs on the bridge's interface (loopback is not shared between them).
    running = trainers(network)
    assert set(running) == set(by_rank.values()), running
    master = network.hosts[by_rank[0]].address
    for name in by_rank.values():
        ranks = [environ(p) for p in running[name] if "RANK" in environ(p)]
        assert ranks, f"no rank process on {name}"
        assert {e["MASTER_ADDR"] for e in ranks} == {master}
        assert {e.get("GLOO_SOCKET_IFNAME") for e in ranks} == {"eth0"}

    victim = by_rank[1]
    network.cut(victim)
    cut_at = time.monotonic()
    gone_after, resumed_after, most = None, None, 0
    deadline = cut_at + 150
    state = job(stack, job_id)
    while time.monotonic() < deadline and state["state"] not in TERMINAL:
        most = max(most, len(live_attempts(network) - {"?"}))
        if gone_after is None and victim not in trainers(network):
            gone_after = time.monotonic() - cut_at
        if resumed_after is None and "resumed from" in logs(stack, job_id):
            resumed_after = time.monotonic() - cut_at
        state = job(stack, job_id)
        time.sleep(0.2)
    # Self-fencing: cut off from the database, the host stopped its ranks before the
    # lease could expire and the job be given to other hosts.
    assert gone_after is not None and gone_after < LEASE, gone_after
    print(
        f"cut host: workload gone {gone_after:.2f} s after the cut (lease {LEASE:g} s); "
        f"resumed on the others after {resumed_after or 0:.1f} s; done after "
        f"{time.monotonic() - cut_at:.1f} s"
    )
    done = wait_state(stack, job_id, TERMINAL, timeout=60)
    assert done["state"] == "SUCCEEDED", logs(stack, job_id)[-3000:]
    assert most == 1, "two attempts' processes were alive at once"
    runs = attempts(stack, job_id)
    assert runs[0]["state"] in ("LOST", "FAILED") and runs[-1]["state"] == "SUCCEEDED", runs
    assert victim not in {n["worker"] for n in runs[-1]["nodes"]}
    assert len({n["worker"] for n in runs[-1]["nodes"]}) == 2
    checkpoint = int(Path(runs[-1]["resume_from"]).name.split("-")[1])
    first_steps = [p[1] for p in metric(stack, job_id, "first_step")]
    assert first_steps[0] == 1 and first_steps[-1] == checkpoint + 1
    network.restore(victim)
    # Back on the network, the host rejoins (its worker heartbeats again).
    restored = time.monotonic()
    wait_for(lambda: victim in online(stack), 60, "the cut host to come back online")
    print(f"the cut host was back online {time.monotonic() - restored:.1f} s after")


def job(stack: Stack, job_id: int) -> dict:
    return stack.api.get(f"/api/v1/jobs/{job_id}/").json()


def test_the_harness_leaves_nothing_behind():
    """The namespaces and bridge of a closed network are gone (the script is safe to run)."""
    network = Network()
    host = network.add_host("probe")
    names = {host.namespace}
    network.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in names)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert network.bridge not in links
    assert not (Path("/etc/netns") / host.namespace).exists()
