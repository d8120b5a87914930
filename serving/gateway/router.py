"""Which replica a request goes to.

The routing table (``serving.deployments.routing.load_table``) is rebuilt from the
database when a message on the gateway pub/sub channel says it changed, and every
``CP_GATEWAY_REFRESH_SECONDS`` in case one was missed. Per replica the gateway keeps
its own count of outstanding requests and whether the replica answers: a request goes
to the ready replica with the fewest outstanding requests (ties at random), after the
canary split; a replica that refused a connection or failed is taken out and probed
(``/health``) back in.

With a deployment's ``prefix_affinity`` on, a request whose prompt starts like an earlier
one (``affinity_key``: its first ``CP_GATEWAY_AFFINITY_CHARS`` characters) goes to the same
replica, where a free slot may still hold that prefix's K/V: the replicas are ranked by a
hash of the key and the URL (rendezvous hashing, so a replica joining or leaving moves
only its own share of prefixes), and the first one with at most
``CP_GATEWAY_AFFINITY_SLACK`` more outstanding requests than the least busy takes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass

# httpx2 (the maintained httpx fork): httpcore's pool costs O(connections^2) per request,
# which held the gateway to ~0.2x of direct at 64 in flight (bench/serving_gateway.py).
import httpx2 as httpx
from asgiref.sync import sync_to_async
from django.conf import settings

from serving.deployments import routing
from serving.deployments.routing import Endpoint, Route

log = logging.getLogger(__name__)
PROBE_INTERVAL = 1.0


@dataclass
class Health:
    outstanding: int = 0
    healthy: bool = True
    since: float = 0.0  # when it was taken out


def _rank(key: bytes, url: str) -> bytes:
    return hashlib.blake2b(key + url.encode(), digest_size=8).digest()


def affinity_key(payload: dict) -> bytes | None:
    """What identifies a request's prompt prefix: the start of ``prompt`` (text, or token
    ids) or of the chat ``messages``; None when it has neither."""
    chars = settings.GATEWAY_AFFINITY_CHARS
    prompt = payload.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt[:chars].encode("utf-8", "replace")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt[:64]):
        return json.dumps(prompt[: max(1, chars // 4)]).encode()
    messages = payload.get("messages")
    if isinstance(messages, list) and messages:
        text, size = [], 0
        for message in messages:
            if not isinstance(message, dict) or size >= chars:
                break
            part = f"{message.get('role')}\x00{message.get('content')}\x00"
            text.append(part)
            size += len(part)
        return "".join(text)[:chars].encode("utf-8", "replace")
    return None


class Ambiguous(Exception):
    """The model name is a deployment of several of the caller's projects."""


class Router:
    def __init__(self, on_auth_change=None) -> None:
        self.table: dict[int, dict[str, Route]] = {}
        self.health: dict[str, Health] = {}  # by endpoint URL
        self.loaded_at = 0.0
        self.changed = asyncio.Event()
        self._on_auth_change = on_auth_change
        self._tasks: list[asyncio.Task] = []
        self._refreshing: asyncio.Task | None = None
        self._again = False
        self.client: httpx.AsyncClient | None = None
        self._turn = 0

    # --- the table --------------------------------------------------------------------

    async def refresh(self) -> None:
        """Reload the table (one reload at a time; a request for another while one runs
        makes one more after it)."""
        if self._refreshing is not None and not self._refreshing.done():
            self._again = True
            await asyncio.shield(self._refreshing)
            return
        self._refreshing = asyncio.ensure_future(self._reload())
        await asyncio.shield(self._refreshing)

    async def _reload(self) -> None:
        while True:
            self._again = False
            try:
                table = await sync_to_async(_load, thread_sensitive=False)()
            except Exception:
                log.exception("could not load the routing table")
                return
            self.table = table
            self.loaded_at = time.monotonic()
            live = {e.url for p in table.values() for r in p.values() for e in r.endpoints}
            for url in list(self.health):
                if url not in live:
                    del self.health[url]
            changed, self.changed = self.changed, asyncio.Event()
            changed.set()
            if not self._again:
                return

    def lookup(self, principal, model: str) -> Route | None:
        """The caller's deployment called ``model`` (or ``project/name``)."""
        project, _, name = model.rpartition("/")
        found = [
            route
            for project_id, routes in self.table.items()
            if principal.sees(project_id) and (route := routes.get(name)) is not None
            if not project or route.project == project
        ]
        if len(found) > 1:
            raise Ambiguous(", ".join(sorted(r.project for r in found)))
        return found[0] if found else None

    def visible(self, principal) -> list[Route]:
        return sorted(
            (r for p, routes in self.table.items() if principal.sees(p) for r in routes.values()),
            key=lambda r: (r.project, r.name),
        )

    # --- choosing a replica -----------------------------------------------------------

    def pick(self, route: Route, exclude: set[str], key: bytes | None = None) -> Endpoint | None:
        """The ready endpoint (not in ``exclude``, URLs) with the fewest outstanding
        requests, after the canary split (or by ``key``'s affinity, see above)."""
        ready = [e for e in route.endpoints if e.url not in exclude and self._health(e.url).healthy]
        if not ready:
            return None
        if route.canary_id and route.canary_percent:
            canary = [e for e in ready if e.revision_id == route.canary_id]
            stable = [e for e in ready if e.revision_id != route.canary_id]
            if canary and stable:
                ready = canary if random.random() * 100 < route.canary_percent else stable  # noqa: S311
        if settings.GATEWAY_BALANCE == "round_robin":  # the baseline it is measured against
            self._turn += 1
            return sorted(ready, key=lambda e: e.url)[self._turn % len(ready)]
        best = min(self._health(e.url).outstanding for e in ready)
        if key is not None and route.prefix_affinity and len(ready) > 1:
            slack = settings.GATEWAY_AFFINITY_SLACK
            for endpoint in sorted(ready, key=lambda e: _rank(key, e.url), reverse=True):
                if self._health(endpoint.url).outstanding <= best + slack:
                    return endpoint
        return random.choice([e for e in ready if self._health(e.url).outstanding == best])  # noqa: S311

    def _health(self, url: str) -> Health:
        found = self.health.get(url)
        if found is None:
            found = self.health[url] = Health()
        return found

    def take_out(self, endpoint: Endpoint) -> None:
        health = self._health(endpoint.url)
        if health.healthy:
            log.warning("replica %s (%s) taken out: it failed", endpoint.replica_id, endpoint.url)
        health.healthy = False
        health.since = time.monotonic()

    def begin(self, endpoint: Endpoint) -> None:
        self._health(endpoint.url).outstanding += 1

    def end(self, endpoint: Endpoint) -> None:
        health = self.health.get(endpoint.url)
        if health is not None and health.outstanding > 0:
            health.outstanding -= 1

    async def wait_for_change(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout)

    # --- background work --------------------------------------------------------------

    def start(self) -> None:
        if self._tasks:
            return
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=2.0, read=None, write=30.0, pool=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=512),
        )
        self._tasks = [
            asyncio.ensure_future(self._listen()),
            asyncio.ensure_future(self._poll()),
            asyncio.ensure_future(self._probe()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        if self.client is not None:
            await self.client.aclose()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(settings.GATEWAY_REFRESH_SECONDS)
            await self.refresh()

    async def _listen(self) -> None:
        """Refresh when the control plane publishes a change (reconnecting as needed)."""
        import redis.asyncio as aioredis

        delay = 0.5
        while True:
            client = aioredis.Redis.from_url(settings.REDIS_URL)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(routing.channel())
                    delay = 0.5
                    await self.refresh()  # whatever changed while we were away
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        try:
                            kind = json.loads(message["data"]).get("type")
                        except (ValueError, AttributeError):
                            continue
                        if kind == routing.AUTH and self._on_auth_change:
                            self._on_auth_change()
                        else:
                            await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: the poll keeps the table fresh
                log.warning("gateway pub/sub: %s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()

    async def _probe(self) -> None:
        """Every second, ask each replica that was taken out whether it answers again."""
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            out = [
                e
                for routes in self.table.values()
                for r in routes.values()
                for e in r.endpoints
                if not self._health(e.url).healthy
            ]
            for endpoint in out:
                try:
                    response = await self.client.get(f"{endpoint.url}/health", timeout=1.0)
                except httpx.HTTPError:
                    continue
                if response.status_code == 200:
                    self._health(endpoint.url).healthy = True
                    log.info("replica %s is back", endpoint.replica_id)


def _load() -> dict[int, dict[str, Route]]:
    from django.db import close_old_connections

    close_old_connections()
    return routing.load_table()
