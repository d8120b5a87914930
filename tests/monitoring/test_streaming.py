"""Telemetry websockets in-process: authentication, the snapshot first and samples after,
project data only to members, and the bounded per-connection buffer."""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.testing import WebsocketCommunicator

from controlplane.asgi import application
from controlplane.tenancy import services as tenancy
from monitoring.agent import TelemetryAgent
from monitoring.consumers import OutBuffer
from tests.asyncio_helpers import run
from tests.monitoring.helpers import host, running_job

pytestmark = pytest.mark.django_db(transaction=True)


def bearer(user) -> list[tuple[bytes, bytes]]:
    raw = tenancy.create_token(tenancy.Actor.system(), user, "ws")[1]
    return [(b"authorization", f"Bearer {raw}".encode())]


async def connect(path: str, headers: list[tuple[bytes, bytes]]):
    ws = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await ws.connect(timeout=5)
    return ws, connected, code


async def tick_in_thread(agent: TelemetryAgent, n: int) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(n):
        await loop.run_in_executor(None, agent.tick)
        await asyncio.sleep(0.05)


async def receive_until(ws, kind: str, count: int, timeout: float = 5) -> list[dict]:
    got = []
    while len(got) < count:
        message = json.loads(await ws.receive_from(timeout=timeout))
        if message["type"] == kind:
            got.append(message)
    return got


@pytest.fixture
def cluster(fake_gpus, cast):
    nv = fake_gpus([{}, {}])
    worker = host("stream-host")
    alpha_job = running_job(cast.alpha, worker, gpus=[0], pids=[], name="alpha-secret-run")
    beta_job = running_job(cast.beta, worker, gpus=[1], pids=[], name="beta-secret-run")
    agent = TelemetryAgent(worker.pk, worker.name, interval=0.1, gateway=nv, persist=False)
    agent.tick()  # a latest sample for the snapshot
    yield worker, alpha_job, beta_job, agent
    agent.close()


def test_anonymous_clients_and_unknown_hosts_are_refused(cluster, cast):
    worker, *_ = cluster
    alice = bearer(cast.alice)

    async def scenario():
        out = []
        for path, headers in (
            ("/ws/telemetry/", []),
            (f"/ws/telemetry/hosts/{worker.pk}/", []),
            ("/ws/telemetry/hosts/999999/", alice),
            ("/ws/telemetry/", [*alice, (b"origin", b"https://evil.example")]),
        ):
            ws, connected, code = await connect(path, headers)
            out.append((connected, code))
            await ws.disconnect()
        return out

    outcomes = run(scenario)
    assert outcomes[:3] == [(False, 4401), (False, 4401), (False, 4404)]
    assert outcomes[3][0] is False  # foreign Origin


def test_the_snapshot_comes_first_then_samples_in_order(cluster, cast):
    worker, _, _, agent = cluster
    bob = bearer(cast.bob)

    async def scenario():
        ws, connected, _ = await connect(f"/ws/telemetry/hosts/{worker.pk}/", bob)
        assert connected
        snapshot = json.loads(await ws.receive_from(timeout=5))
        ticker = asyncio.create_task(tick_in_thread(agent, 3))
        samples = await receive_until(ws, "sample", 3)
        await ticker
        await ws.disconnect()
        # Reconnecting: the current state again first, then what comes next.
        ws, _, _ = await connect(f"/ws/telemetry/hosts/{worker.pk}/?since={samples[-1]['t']}", bob)
        again = json.loads(await ws.receive_from(timeout=5))
        await ws.disconnect()
        return snapshot, samples, again

    snapshot, samples, again = run(scenario)
    assert snapshot["type"] == "snapshot" and snapshot["v"] == 1 and snapshot["scope"] == "host"
    assert snapshot["hosts"][0]["host"]["id"] == worker.pk
    assert [s["seq"] for s in samples] == sorted(s["seq"] for s in samples)
    assert samples[0]["seq"] > snapshot["hosts"][0]["seq"]
    assert again["type"] == "snapshot" and again["hosts"][0]["seq"] == samples[-1]["seq"]
    assert again["recent"][str(worker.pk)] == [] or all(
        e["t"] > samples[-1]["t"] for e in again["recent"][str(worker.pk)]
    )


def test_members_see_only_their_projects_jobs(cluster, cast):
    _, alpha_job, beta_job, agent = cluster
    dave = bearer(cast.dave)

    async def scenario():
        ws, connected, _ = await connect("/ws/telemetry/", dave)
        assert connected
        snapshot = await ws.receive_from(timeout=5)
        ticker = asyncio.create_task(tick_in_thread(agent, 2))
        texts = [snapshot]
        while len(texts) < 3:
            texts.append(await ws.receive_from(timeout=5))
        await ticker
        await ws.disconnect()
        refused = await connect(f"/ws/telemetry/jobs/{alpha_job.pk}/", dave)
        await refused[0].disconnect()
        own, ok, _ = await connect(f"/ws/telemetry/jobs/{beta_job.pk}/", dave)
        own_snapshot = json.loads(await own.receive_from(timeout=5))
        ticker = asyncio.create_task(tick_in_thread(agent, 1))
        own_sample = json.loads(await own.receive_from(timeout=5))
        await ticker
        await own.disconnect()
        return texts, refused[1:], ok, own_snapshot, own_sample

    texts, refused, ok, own_snapshot, own_sample = run(scenario)
    for text in texts:
        assert "alpha-secret-run" not in text and '"alpha"' not in text
    sample = json.loads(texts[-1])
    held = {g["index"]: g["holder"] for g in sample["gpus"]}
    assert held[0] == {"kind": "job", "hidden": True}
    assert held[1]["name"] == "beta-secret-run"
    assert [h["id"] for h in sample["holders"]] == [beta_job.pk]
    assert refused == (False, 4404)
    assert ok and own_snapshot["type"] == "snapshot" and own_snapshot["id"] == beta_job.pk
    assert own_sample["type"] == "holder_sample" and [g["index"] for g in own_sample["gpus"]] == [1]


def test_a_superuser_sees_every_job(cluster, cast):
    _, alpha_job, beta_job, _ = cluster
    olga = bearer(cast.olga)

    async def scenario():
        ws, _, _ = await connect("/ws/telemetry/", olga)
        snapshot = json.loads(await ws.receive_from(timeout=5))
        await ws.disconnect()
        return snapshot

    snapshot = run(scenario)
    assert {h["id"] for h in snapshot["hosts"][0]["holders"]} == {alpha_job.pk, beta_job.pk}


def test_a_slow_connection_loses_the_oldest_samples_and_is_told():
    async def scenario():
        buffer = OutBuffer(size=4)
        sent: list[str] = []
        gate = asyncio.Event()

        async def slow_send(text: str) -> None:
            await gate.wait()  # a browser that does not read
            sent.append(text)

        buffer.push_first("snapshot")
        for i in range(3):
            buffer.push(f"early{i}")  # samples that came while the snapshot was read
        pump = asyncio.create_task(buffer.pump(slow_send))
        await asyncio.sleep(0.01)  # the snapshot is being sent (stuck)
        for i in range(1, 11):
            buffer.push(f"s{i}")
        gate.set()
        await asyncio.sleep(0.05)
        pump.cancel()
        return sent, buffer.total_dropped

    sent, dropped = asyncio.run(scenario())
    assert sent[0] == "snapshot" and dropped == 9  # the snapshot is never dropped
    notice = json.loads(sent[1])
    assert notice["type"] == "dropped" and notice["count"] == 9 and notice["total"] == 9
    assert sent[2:] == ["s7", "s8", "s9", "s10"]


def test_redaction_hides_every_process_on_another_projects_gpu():
    from monitoring.frames import redact

    frame = {
        "holders": [{"kind": "job", "id": 1, "project_id": 10},
                    {"kind": "job", "id": 2, "project_id": 20}],
        "gpus": [
            {"index": 0, "holder": {"kind": "job", "id": 1, "project_id": 10, "name": "mine"},
             "processes": [{"pid": 11, "holder": ["job", 1]}, {"pid": 12, "holder": None}]},
            {"index": 1, "holder": {"kind": "job", "id": 2, "project_id": 20, "name": "theirs"},
             "processes": [{"pid": 21, "holder": ["job", 2]}, {"pid": 22, "holder": None}]},
            {"index": 2, "holder": None, "processes": [{"pid": 31, "holder": None}]},
        ],
    }  # fmt: skip
    seen = redact(frame, {10})
    assert [h["id"] for h in seen["holders"]] == [1]
    assert [p["pid"] for g in seen["gpus"] for p in g["processes"]] == [11, 12, 31]
    assert seen["gpus"][1]["holder"] == {"kind": "job", "hidden": True}
    assert redact(frame, None) is frame and "theirs" in str(redact(frame, {10, 20}))
