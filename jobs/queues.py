"""The pending jobs as a scheduling pass walks them, read lazily.

The pass's order is priority (high first), then fair share across projects (the project
using the fewest GPUs goes next, recomputed as jobs are placed), then age. Jobs of one
project with the same *shape* (GPUs or CPU slots per node, nodes, image, kind) behave
alike within a pass: once one of them cannot be placed (no capacity for that shape, or
the project's quota), none after it can, since capacity only shrinks and usage only grows
during a pass. So each project's queue is kept as one queue per shape, read from the
database a chunk at a time, and a shape queue that stops is not read further: its jobs
wait. A pass over 100,000 queued jobs reads the jobs it places and about one more per
shape queue, not all of them (bench/scheduler_fleet.py).

The jobs a pass never reaches keep the reason they were last given.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterator

from django.db.models import Count, Min

from jobs.models import Job
from jobs.placement import Pending
from jobs.states import JobState

FIRST_CHUNK = 8
MAX_CHUNK = 512
FIELDS = ("id", "project_id", "priority", "nodes", "gpus_per_node", "procs_per_node",
          "reason", "image", "kind")  # fmt: skip
SHAPE = ("priority", "project_id", "nodes", "gpus_per_node", "procs_per_node", "image", "kind")


def shape_of(gpus_per_node: int, procs_per_node: int, nodes: int, image: str) -> tuple:
    """What decides whether a job fits: (GPU job, GPUs or slots per node, nodes, image)."""
    return (gpus_per_node > 0, gpus_per_node or procs_per_node, nodes, bool(image))


def _due(now):
    # restarting after a failure: backing off until not_before
    return Job.objects.filter(state=JobState.PENDING).exclude(not_before__gt=now)


class ShapeQueue:
    """One project's pending jobs of one shape, oldest first, fetched in chunks."""

    def __init__(self, key: tuple, first_id: int, count: int, now) -> None:
        self.key = dict(zip(SHAPE, key, strict=True))
        self.count = count
        self.now = now
        self.buffer: deque[Pending] = deque()
        self.last_id = first_id - 1
        self.fetched = 0
        self.chunk = FIRST_CHUNK
        self.stopped = False

    def head_id(self) -> int | None:
        """The oldest job's id, read from the database only when it is not known yet."""
        if self.stopped:
            return None
        if self.buffer:
            return self.buffer[0].pk
        if self.fetched == 0:
            return self.last_id + 1  # the group's first id: nothing read yet
        job = self.head()
        return job.pk if job is not None else None

    def shape(self) -> tuple:
        key = self.key
        return shape_of(key["gpus_per_node"], key["procs_per_node"], key["nodes"], key["image"])

    def head(self) -> Pending | None:
        if self.stopped:
            return None
        if not self.buffer and self.fetched < self.count:
            rows = list(
                _due(self.now)
                .filter(**self.key, id__gt=self.last_id)
                .order_by("id")
                .values_list(*FIELDS)[: self.chunk]
            )
            self.chunk = min(MAX_CHUNK, self.chunk * 2)
            self.fetched += len(rows)
            if not rows:
                self.fetched = self.count
            self.buffer.extend(Pending(*row) for row in rows)
            if rows:
                self.last_id = rows[-1][0]
        return self.buffer[0] if self.buffer else None

    def stop(self) -> list[Pending]:
        """No more of this queue this pass; returns its jobs already read (they wait)."""
        self.stopped = True
        left = list(self.buffer)
        self.buffer.clear()
        return left


class PendingQueues:
    """The pass's pending jobs, by priority, project and shape."""

    def __init__(self, now) -> None:
        self.by_priority: dict[int, dict[int, list[ShapeQueue]]] = {}
        self.total = 0
        groups = _due(now).values(*SHAPE).annotate(first=Min("id"), n=Count("id")).order_by()
        for row in groups:
            key = tuple(row[name] for name in SHAPE)
            queue = ShapeQueue(key, row["first"], row["n"], now)
            projects = self.by_priority.setdefault(row["priority"], {})
            projects.setdefault(row["project_id"], []).append(queue)
            self.total += row["n"]

    def __bool__(self) -> bool:
        return self.total > 0

    def project_ids(self) -> set[int]:
        return {p for projects in self.by_priority.values() for p in projects}

    @staticmethod
    def _next(
        queues: list[ShapeQueue], dead: Callable[[ShapeQueue], bool]
    ) -> tuple[int, ShapeQueue] | None:
        best: tuple[int, ShapeQueue] | None = None
        for queue in queues:
            if queue.stopped:
                continue
            if dead(queue):
                queue.stop()  # its shape cannot be placed any more this pass: not read
                continue
            pk = queue.head_id()
            if pk is not None and (best is None or pk < best[0]):
                best = (pk, queue)
        return best

    def ordered(
        self, usage: dict[int, int], dead: Callable[[ShapeQueue], bool]
    ) -> Iterator[tuple[Pending, ShapeQueue]]:
        """Jobs in the pass's order, each with its shape queue; the caller stops a queue
        (``queue.stop()``) when the rest of it cannot be placed in this pass, and ``dead``
        says which queues need not be read at all. ``usage`` (GPUs per project) is read
        again each time a project comes up."""
        for priority in sorted(self.by_priority, reverse=True):
            projects = self.by_priority[priority]
            heap = []
            for project_id, queues in projects.items():
                found = self._next(queues, dead)
                if found is not None:
                    heap.append((usage.get(project_id, 0), found[0], project_id))
            heapq.heapify(heap)
            while heap:
                _, _, project_id = heapq.heappop(heap)
                found = self._next(projects[project_id], dead)
                if found is None:
                    continue
                queue = found[1]
                job = queue.head()
                if job is None:  # gone since the groups were read (cancelled, started)
                    queue.stop()
                else:
                    queue.buffer.popleft()
                    yield job, queue
                after = self._next(projects[project_id], dead)
                if after is not None:
                    heapq.heappush(heap, (usage.get(project_id, 0), after[0], project_id))
