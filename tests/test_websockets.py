"""Websocket auth and the /ws/ping/ round trip through the Redis channel layer."""

from __future__ import annotations

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


def test_same_site_browsers_are_let_in_and_foreign_origins_refused():
    raw = token_for("browser")
    auth = (b"authorization", f"Bearer {raw}".encode())

    async def scenario():
        results = {}
        for origin in (b"http://localhost:8000", b"https://evil.example"):
            ws, connected, _ = await connect([auth, (b"origin", origin)])
            results[origin] = connected
            await ws.disconnect()
        return results

    results = run(scenario)
    assert results == {b"http://localhost:8000": True, b"https://evil.example": False}


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
