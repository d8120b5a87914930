"""The scaling rule, after Ray Serve's ``autoscaling_config``: keep about
``target_ongoing_requests`` requests in flight per replica, between ``min`` and ``max``
replicas; scale up once the load has asked for more for ``upscale_delay`` seconds, down
once it has asked for fewer for ``downscale_delay`` seconds. With ``min`` 0, a deployment
that served no request for ``downscale_delay`` seconds goes to zero, and a request that
arrives then starts one replica (the gateway holds it until the replica is ready).

Pure arithmetic: the controller passes the load and the memory kept on the deployment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Decision:
    replicas: int
    memory: dict
    why: str = ""  # set when the count changes


def decide(
    *,
    current: int,
    low: int,
    high: int,
    ongoing: float,
    served: float,
    config: dict,
    memory: dict,
    now: float,
    woken: bool,
    settled: bool = True,
) -> Decision:
    """``ongoing``: requests in flight on the ready replicas now; ``served``: requests
    finished since the last pass; ``woken``: a request is waiting for a replica;
    ``settled``: every replica wanted is ready (until then the load is not known, so it
    never scales down, and idle time counts only from then)."""
    target = float(config.get("target_ongoing_requests") or 2.0)
    up_delay = float(config.get("upscale_delay", 3.0))
    down_delay = float(config.get("downscale_delay", 30.0))
    memory = dict(memory)
    if ongoing > 0 or served > 0 or woken or not settled:
        memory["busy_at"] = now
    memory.setdefault("busy_at", now)  # idle time counts from the first pass
    if current == 0:
        if woken:
            return Decision(max(1, low), {"busy_at": now}, "a request arrived while scaled to zero")
        return Decision(max(0, low), memory)
    wanted = math.ceil(ongoing / target - 1e-9) if ongoing > 0 else 0
    floor = low if low > 0 else (0 if now - memory.get("busy_at", now) >= down_delay else 1)
    wanted = min(max(wanted, floor, 0), high)
    if wanted == current:
        memory.pop("up_since", None)
        memory.pop("down_since", None)
        return Decision(current, memory)
    if wanted > current:
        memory.pop("down_since", None)
        since = memory.setdefault("up_since", now)
        if now - since >= up_delay:
            memory.pop("up_since", None)
            return Decision(
                wanted,
                memory,
                f"Scaling up {current} -> {wanted}: {ongoing:g} requests in flight "
                f"({ongoing / current:.1f} per replica; target {target:g}).",
            )
        return Decision(current, memory)
    memory.pop("up_since", None)
    if not settled:
        memory.pop("down_since", None)
        return Decision(current, memory)
    since = memory.setdefault("down_since", now)
    if now - since >= down_delay or wanted == 0:
        memory.pop("down_since", None)
        why = (
            f"Scaling to zero: no request for {down_delay:g} s."
            if wanted == 0
            else f"Scaling down {current} -> {wanted}: {ongoing:g} requests in flight "
            f"(target {target:g} per replica) for {down_delay:g} s."
        )
        return Decision(wanted, memory, why)
    return Decision(current, memory)
