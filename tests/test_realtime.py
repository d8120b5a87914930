"""Channel-layer sends from synchronous code go out on one long-lived loop per process
(controlplane/realtime.py), over the real Redis the tests run."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import uuid

from channels.layers import get_channel_layer

from controlplane import realtime


class Listener(threading.Thread):
    """A group member on its own loop (as a websocket consumer is), collecting n messages."""

    def __init__(self, layer, n: int) -> None:
        super().__init__(daemon=True)
        self.layer, self.n = layer, n
        self.group = f"rt-{uuid.uuid4().hex[:8]}"
        self.joined = threading.Event()
        self.got: list = []

    def run(self) -> None:
        async def listen() -> None:
            channel = await self.layer.new_channel()
            await self.layer.group_add(self.group, channel)
            self.joined.set()
            for _ in range(self.n):
                message = await asyncio.wait_for(self.layer.receive(channel), 20)
                self.got.append(message["i"])

        asyncio.run(listen())

    def __enter__(self) -> Listener:
        self.start()
        assert self.joined.wait(20)
        return self

    def __exit__(self, *exc: object) -> None:
        self.join(30)


def test_sync_sends_arrive_in_order_and_reuse_one_loop():
    layer = get_channel_layer()
    with Listener(layer, 30) as listener:
        realtime.group_send(layer, [listener.group], {"type": "x", "i": 0})
        loop = realtime._loop
        for i in range(1, 30):
            realtime.group_send(layer, [listener.group], {"type": "x", "i": i})
        assert realtime._loop is loop and loop.is_running()
    assert listener.got == list(range(30))


def _child(group: str, queue) -> None:
    try:
        realtime.group_send(get_channel_layer(), [group], {"type": "x", "i": "child"})
        queue.put("sent")
    except Exception as exc:  # e.g. waiting on the parent's loop, whose thread is not here
        queue.put(f"{type(exc).__name__}: {exc}")


def test_a_forked_child_gets_a_loop_of_its_own():
    layer = get_channel_layer()
    with Listener(layer, 2) as listener:
        realtime.group_send(layer, [listener.group], {"type": "x", "i": "parent"})
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_child, args=(listener.group, queue))
        child.start()
        child.join(20)
        assert queue.get(timeout=10) == "sent"
    assert listener.got == ["parent", "child"]
