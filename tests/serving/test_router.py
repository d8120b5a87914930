"""The gateway's choice of replica: least outstanding, and prefix affinity (rendezvous
hashing of the prompt's start, given up when the preferred replica is too busy)."""

from __future__ import annotations

from serving.deployments.routing import Endpoint, Route
from serving.gateway.router import Router, affinity_key


def route(n: int, affinity: bool = True) -> Route:
    r = Route(
        deployment_id=1, project_id=1, project="p", name="chat", state="READY", revision_id=1,
        canary_id=None, canary_percent=0, request_timeout=60, scale_to_zero=False,
        rate_limit=None, prefix_affinity=affinity,
    )  # fmt: skip
    r.endpoints = [Endpoint(i, i, f"http://127.0.0.1:{9000 + i}", "k", 1) for i in range(1, n + 1)]
    return r


def keys(n: int) -> list[bytes]:
    return [affinity_key({"prompt": f"You are assistant number {i}. " * 20}) for i in range(n)]


def test_the_same_prefix_goes_to_the_same_replica_and_prefixes_spread(settings):
    router, r = Router(), route(2)
    picks = {k: router.pick(r, set(), k).number for k in keys(60)}
    assert all(router.pick(r, set(), k).number == n for k, n in picks.items())
    assert 15 <= sum(n == 1 for n in picks.values()) <= 45  # both replicas get a share
    # Only the start of the prompt counts: a different question after the same system prompt.
    a = affinity_key({"prompt": "S" * 300 + " what is 1+1?"})
    assert a == affinity_key({"prompt": "S" * 300 + " and 2+2?"}) and len(a) == 256
    settings.GATEWAY_AFFINITY_CHARS = 8
    assert affinity_key({"prompt": "S" * 300}) == b"S" * 8


def test_a_busy_preferred_replica_gives_the_request_to_the_least_busy(settings):
    settings.GATEWAY_AFFINITY_SLACK = 2
    router, r = Router(), route(2)
    key = keys(1)[0]
    preferred = router.pick(r, set(), key)
    other = next(e for e in r.endpoints if e is not preferred)
    for _ in range(2):  # within the slack: still the preferred one
        router.begin(preferred)
    assert router.pick(r, set(), key) is preferred
    router.begin(preferred)  # 3 more than the other: too busy
    assert router.pick(r, set(), key) is other
    assert router.pick(r, {other.url}, key) is preferred  # a retry excludes the one tried
    off = router.pick(route(2, affinity=False), set(), key)
    assert off.url == other.url  # affinity off: least outstanding


def test_a_replica_leaving_moves_only_its_own_prefixes():
    router, three = Router(), route(3)
    before = {k: router.pick(three, set(), k).number for k in keys(90)}
    two = route(3)
    two.endpoints = [e for e in two.endpoints if e.number != 3]
    after = {k: router.pick(two, set(), k).number for k in keys(90)}
    moved = [k for k in before if before[k] != after[k]]
    assert moved and all(before[k] == 3 for k in moved)


def test_affinity_keys_of_chats_and_token_ids():
    chat = {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    }
    assert affinity_key(chat) == b"system\x00Be brief.\x00user\x00Hi\x00"
    assert affinity_key({"prompt": [1, 2, 3]}) == b"[1, 2, 3]"
    assert affinity_key({"prompt": ["one string"]}) == b"one string"
    assert affinity_key({"model": "chat"}) is None and affinity_key({"messages": "x"}) is None
