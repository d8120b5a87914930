"""The telemetry message schema (version ``SCHEMA_VERSION``), group names, attribution of
GPUs and processes to jobs, and the redaction that keeps project data to members.

Groups (channel layer ``telemetry``): ``telemetry.cluster``, ``telemetry.host.<worker
id>`` and ``telemetry.<kind>.<id>`` for whatever holds GPUs: ``job`` today, ``deployment``
when serving replicas report their processes the same way (see ``Holding.kind``).

Messages (every one has ``type`` and ``v``):

- ``sample``: one host's reading at time ``t`` (epoch seconds) -- ``host``, ``seq``,
  ``interval``, ``nvml`` (``ok`` or why there are no GPUs), ``cpu``/``mem``/... under
  ``host_metrics``, ``gpus`` (each with ``holder`` and its ``processes``), ``holders``
  (per job: GPUs, utilization, memory, power, energy, CPU) and ``agent`` (its own cost).
- ``holder_sample``: the same, narrowed to one job's GPUs and processes (per-job groups).
- ``snapshot``: the current state (the latest ``sample`` of each host in view, plus a
  short recent window), sent first on every (re)connect; ``sample`` messages follow.
- ``dropped``: this connection was too slow and ``count`` older messages were skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
CLUSTER_GROUP = "telemetry.cluster"
COMPACT_GPU_FIELDS = ("util_gpu", "mem_used", "power_w", "temp_gpu", "sm_clock", "mem_clock")


def group(kind: str, key: int | str) -> str:
    """``telemetry.host.3``, ``telemetry.job.42``, ``telemetry.deployment.7``."""
    return f"telemetry.{kind}.{key}"


def host_group(worker_id: int) -> str:
    return group("host", worker_id)


@dataclass
class Holding:
    """Something that holds GPUs of this host: a job's node (later: a serving replica)."""

    kind: str
    id: int
    name: str
    project_id: int
    project: str
    gpus: list[int] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)
    attempt: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # what an annotator adds (its serving)

    def label(self) -> dict[str, Any]:
        return {
            **self.extra,
            "kind": self.kind,
            "id": self.id,
            "name": self.name,
            "project_id": self.project_id,
            "project": self.project,
            "attempt": self.attempt,
        }


def attribute(
    gpus: list[dict[str, Any]], holdings: list[Holding]
) -> tuple[list[dict[str, Any]], dict[tuple[str, int], list[int]]]:
    """Label each GPU with its holder and each process with the holder owning its pid.

    Returns the labelled GPU entries and, per holder, the indices of the GPUs it holds.
    A GPU is held by the job whose node reserved it; a process belongs to the job whose
    launcher recorded its pid (so a job's stray process on another GPU is still its own).
    """
    by_gpu: dict[int, Holding] = {}
    by_pid: dict[int, Holding] = {}
    for holding in holdings:
        for index in holding.gpus:
            by_gpu[index] = holding
        for pid in holding.pids:
            by_pid[pid] = holding
    held: dict[tuple[str, int], list[int]] = {}
    labelled = []
    for gpu in gpus:
        entry = dict(gpu)
        holder = by_gpu.get(gpu["index"])
        entry["holder"] = holder.label() if holder else None
        if holder:
            held.setdefault((holder.kind, holder.id), []).append(gpu["index"])
        procs = []
        for proc in gpu.get("processes") or []:
            owner = by_pid.get(proc["pid"])
            procs.append({**proc, "holder": [owner.kind, owner.id] if owner else None})
        entry["processes"] = procs
        if entry.get("mig"):
            entry["mig"] = [
                {
                    **m,
                    "processes": [
                        {**p, "holder": [by_pid[p["pid"]].kind, by_pid[p["pid"]].id]}
                        if p["pid"] in by_pid
                        else {**p, "holder": None}
                        for p in m["processes"]
                    ],
                }
                for m in entry["mig"]
            ]
        labelled.append(entry)
    return labelled, held


def projects_in(frame: dict[str, Any]) -> list[int]:
    """The projects whose data a frame carries (what a viewer must be a member of)."""
    return sorted({h["project_id"] for h in frame.get("holders", [])})


def redact(frame: dict[str, Any], visible: set[int] | None) -> dict[str, Any]:
    """``frame`` as a user who sees only projects ``visible`` (None: all) may see it.

    A GPU held by another project's job says only that it is busy; that job's processes
    and its per-job figures are left out.
    """
    if visible is None:
        return frame
    hidden = {
        (h["kind"], h["id"]) for h in frame.get("holders", []) if h["project_id"] not in visible
    }
    if not hidden:
        return frame
    out = dict(frame)
    out["holders"] = [h for h in frame["holders"] if (h["kind"], h["id"]) not in hidden]

    def shown(procs: list[dict[str, Any]], busy: bool) -> list[dict[str, Any]]:
        # On another project's GPU, even a process not attributed yet is likely its job's.
        return [
            p
            for p in procs
            if (p["holder"] and tuple(p["holder"]) not in hidden) or (not p["holder"] and not busy)
        ]

    gpus = []
    for gpu in frame.get("gpus", []):
        entry = dict(gpu)
        holder = gpu.get("holder")
        busy = bool(holder) and (holder["kind"], holder["id"]) in hidden
        if busy:
            entry["holder"] = {"kind": holder["kind"], "hidden": True}
        entry["processes"] = shown(gpu.get("processes", []), busy)
        if gpu.get("mig"):
            entry["mig"] = [{**m, "processes": shown(m["processes"], busy)} for m in gpu["mig"]]
        gpus.append(entry)
    out["gpus"] = gpus
    return out


def narrow(frame: dict[str, Any], kind: str, holder_id: int) -> dict[str, Any] | None:
    """The part of a host frame about one holder (its GPUs, its processes), or None."""
    figures = next(
        (h for h in frame.get("holders", []) if h["kind"] == kind and h["id"] == holder_id), None
    )
    if figures is None:
        return None
    mine = [kind, holder_id]
    gpus = []
    for gpu in frame["gpus"]:
        if gpu["index"] not in figures["gpus"]:
            continue
        entry = dict(gpu)
        entry["processes"] = [p for p in gpu["processes"] if p["holder"] == mine]
        gpus.append(entry)
    return {
        "type": "holder_sample",
        "v": SCHEMA_VERSION,
        "kind": kind,
        "id": holder_id,
        "host": frame["host"],
        "t": frame["t"],
        "seq": frame["seq"],
        "interval": frame["interval"],
        "gpus": gpus,
        "usage": figures,
    }


def compact(frame: dict[str, Any]) -> dict[str, Any]:
    """A small entry of the recent window: host CPU/memory and each GPU's chart fields."""
    host = frame.get("host_metrics") or {}
    gpus = frame.get("gpus", [])
    by_index: list[list[Any] | None] = [None] * (max((g["index"] for g in gpus), default=-1) + 1)
    for g in gpus:
        by_index[g["index"]] = [g.get(k) for k in COMPACT_GPU_FIELDS]
    return {
        "t": frame["t"],
        "cpu": host.get("cpu"),
        "mem_used": host.get("mem_used"),
        "gpus": by_index,
    }
