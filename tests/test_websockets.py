"""Websocket auth and the /ws/ping/ round trip through the Redis channel layer."""

from __future__ import annotations

import asyncio

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model

from controlplane.asgi import application
from controlplane.tenancy import services
from tests.asyncio_helpers import run

pytestmark = pytest.mark.django_db(transaction=True)


def token_for(username: str) -> str:
    user = get_user_model().objects.create_user(username, password="x-pass-123")
    return services.create_token(services.Actor.system(), user, "ws")[1]


async def connect(headers: list[tuple[bytes, bytes]]):
    communicator = WebsocketCommunicator(application, "/ws/ping/", headers=headers)
    connected, code = await communicator.connect(timeout=5)
    return communicator, connected, code


def test_a_token_holder_gets_a_pong_through_the_channel_layer():
    raw = token_for("wsuser")

    async def scenario():
        ws, connected, _ = await connect([(b"authorization", f"Bearer {raw}".encode())])
        assert connected
        await ws.send_json_to({"type": "ping", "id": 7})
        reply = await ws.receive_json_from(timeout=5)
        await ws.send_to(text_data="not json")
        error = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return reply, error

    reply, error = run(scenario)
    assert reply["type"] == "pong" and reply["v"] == 1 and reply["id"] == 7
    assert reply["user"] == "wsuser" and reply["layer_ms"] >= 0
    assert error["type"] == "error"


def test_same_site_browsers_are_let_in_and_foreign_origins_refused(settings):
    settings.CSRF_TRUSTED_ORIGINS = []  # only the request's own origin
    raw = token_for("browser")
    auth = (b"authorization", f"Bearer {raw}".encode())

    origins = {
        b"http://localhost:8000": True,  # this very site
        b"https://evil.example": False,
        b"http://localhost:9999": False,  # same host, another port: another origin
        b"https://localhost:8000": False,  # another scheme
        b"http://127.0.0.1:8000": False,
    }

    async def scenario():
        results = {}
        for origin in origins:
            ws, connected, _ = await connect(
                [auth, (b"host", b"localhost:8000"), (b"origin", origin)]
            )
            results[origin] = connected
            await ws.disconnect()
        # A browser whose request names no host cannot be checked: refused.
        ws, results[b"no host"], _ = await connect([auth, (b"origin", b"http://localhost:8000")])
        await ws.disconnect()
        return results

    assert run(scenario) == {**origins, b"no host": False}


def test_anonymous_and_bad_tokens_are_closed():
    async def scenario():
        outcomes = []
        for headers in ([], [(b"authorization", b"Bearer cp_nope_nope")]):
            ws, connected, code = await connect(headers)
            outcomes.append((connected, code))
            await ws.disconnect()
        return outcomes

    assert run(scenario) == [(False, 4401), (False, 4401)]


def test_an_idle_socket_stays_open_for_30_seconds():
    """The consumer waits on the channel layer (a blocking Redis read of up to 5 s) while
    nothing happens: a socket timeout shorter than that read dropped every idle socket."""
    raw = token_for("idler")

    async def scenario():
        ws, connected, _ = await connect([(b"authorization", f"Bearer {raw}".encode())])
        assert connected
        assert await ws.receive_nothing(timeout=IDLE_SECONDS, interval=0.5)
        await ws.send_json_to({"type": "ping", "id": 1})
        reply = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return reply

    assert run(scenario)["type"] == "pong"


IDLE_SECONDS = 30


def test_revoking_the_token_or_removing_the_member_closes_open_sockets(settings):
    from channels.db import database_sync_to_async

    from controlplane.tenancy.models import ApiToken, Membership, Project, Role
    from jobs.models import Job

    settings.WS_RECHECK_SECONDS = 1.0
    raw = token_for("watcher")
    user = get_user_model().objects.get(username="watcher")
    project = Project.objects.create(name="watched")
    membership = Membership.objects.create(user=user, project=project, role=Role.MEMBER)
    job = Job.objects.create(
        project=project, name="watched", entrypoint=["python", "x.py"], spec={}
    )
    auth = [(b"authorization", f"Bearer {raw}".encode())]

    async def closed_after(action) -> tuple[float, int]:
        ws = WebsocketCommunicator(application, f"/ws/jobs/{job.pk}/", headers=auth)
        connected, _ = await ws.connect(timeout=5)
        assert connected
        assert (await ws.receive_json_from(timeout=5))["type"] == "snapshot"
        started = asyncio.get_running_loop().time()
        await database_sync_to_async(action)()
        message = await ws.receive_output(timeout=5)
        took = asyncio.get_running_loop().time() - started
        await ws.disconnect()
        assert message["type"] == "websocket.close", message
        return took, message["code"]

    def remove():
        services.remove_member(services.Actor.system(), membership)

    def revoke():
        services.revoke_token(services.Actor.system(), ApiToken.objects.get(user=user))

    def remove_quietly():  # behind the services' back: only the timer notices
        Membership.objects.filter(user=user).delete()

    async def scenario():
        outcomes = [await closed_after(remove)]
        await database_sync_to_async(Membership.objects.create)(
            user=user, project=project, role=Role.MEMBER
        )
        outcomes.append(await closed_after(remove_quietly))
        await database_sync_to_async(Membership.objects.create)(
            user=user, project=project, role=Role.MEMBER
        )
        outcomes.append(await closed_after(revoke))
        _, connected, code = await connect(auth)  # and it cannot come back
        return outcomes, (connected, code)

    outcomes, again = run(scenario)
    (removed, c1), (quietly, c2), (revoked, c3) = outcomes
    assert removed < 1.0 and c1 == 4401  # at once, by the group message
    assert quietly < 3.0 and c2 == 4403  # by the re-check timer
    assert revoked < 1.0 and c3 == 4401
    assert again == (False, 4401)
