"""Who uses which device. The inventory does not know about jobs or replicas (they are
built on top of it), so those apps register a provider here; the workers and GPUs API asks
all providers. Entries for projects the caller is not in say only that the device is busy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

Key = tuple[int, str, int]  # (worker id, "gpu" | "cpu", index)
Provider = Callable[[Any, Iterable[int]], dict[Key, dict]]
_providers: list[Provider] = []


def register(provider: Provider) -> None:
    if provider not in _providers:
        _providers.append(provider)


def usage_for(user: Any, worker_ids: Iterable[int]) -> dict[Key, dict]:
    ids = list(worker_ids)
    found: dict[Key, dict] = {}
    for provider in _providers:
        found.update(provider(user, ids))
    return found
