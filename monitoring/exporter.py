"""``/metrics`` in the Prometheus text format (0.0.4).

For every GPU of every live host: dcgm-exporter's default fields under its names, units
and labels (``gpu``, ``UUID``, ``pci_bus_id``, ``device``, ``modelName``, ``Hostname``,
``DCGM_FI_DRIVER_VERSION``), so dashboards built for dcgm-exporter (grafana.com 12239)
work unchanged, plus ``job`` and ``project`` on a GPU a job holds. A field the GPU does
not support is left out, as dcgm-exporter does. MIG instances get their own
framebuffer rows (``GPU_I_ID``, ``GPU_I_PROFILE``). Then our own ``cp_`` metrics: hosts,
the agents' own cost, jobs by state, queue depth, and per-job GPU usage and energy.

Written by hand rather than through prometheus_client's registry because dcgm-exporter's
counters carry no ``_total`` suffix, which that library would add.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from django.db.models import Count, Sum

from controlplane.cluster.models import Worker
from jobs.models import Job
from jobs.states import JOB_ACTIVE, JobState
from monitoring import store
from monitoring.models import JobUsage

MIB = 1024 * 1024


def _mib(key: str) -> Callable[[dict], Any]:
    return lambda g: None if g.get(key) is None else g[key] / MIB


def _field(key: str) -> Callable[[dict], Any]:
    return lambda g: g.get(key)


DCGM: list[tuple[str, str, str, Callable[[dict], Any]]] = [
    ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).", _field("sm_clock")),
    ("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz).", _field("mem_clock")),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", _field("temp_gpu")),
    ("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C).", _field("temp_mem")),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", _field("power_w")),
    ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter",
     "Total energy consumption since boot (in mJ).", _field("energy_mj")),
    ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "Total number of PCIe retries.",
     _field("pcie_replay")),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", _field("util_gpu")),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %).", _field("util_mem")),
    ("DCGM_FI_DEV_ENC_UTIL", "gauge", "Encoder utilization (in %).", _field("enc_util")),
    ("DCGM_FI_DEV_DEC_UTIL", "gauge", "Decoder utilization (in %).", _field("dec_util")),
    ("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered.",
     lambda g: g.get("xid") or 0),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).", _mib("mem_free")),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", _mib("mem_used")),
    ("DCGM_FI_DEV_FB_RESERVED", "gauge", "Framebuffer memory reserved (in MiB).",
     _mib("mem_reserved")),
    ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter",
     "Number of remapped rows for correctable errors", _field("remapped_correctable")),
    ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter",
     "Number of remapped rows for uncorrectable errors", _field("remapped_uncorrectable")),
    ("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "Whether remapping of rows has failed",
     lambda g: None if g.get("remap_failure") is None else int(g["remap_failure"])),
]  # fmt: skip

HOST: list[tuple[str, str, Callable[[dict], Any]]] = [
    ("cp_host_cpu_percent", "CPU busy, % of all cores.", lambda h: h.get("cpu")),
    ("cp_host_load1", "1-minute load average.", lambda h: (h.get("load") or [None])[0]),
    ("cp_host_memory_used_bytes", "Memory in use.", lambda h: h.get("mem_used")),
    ("cp_host_memory_total_bytes", "Memory installed.", lambda h: h.get("mem_total")),
    ("cp_host_swap_used_bytes", "Swap in use.", lambda h: h.get("swap_used")),
    ("cp_host_network_receive_bytes_per_second", "Received, all NICs but lo.",
     lambda h: h.get("net_rx_bps")),
    ("cp_host_network_transmit_bytes_per_second", "Sent, all NICs but lo.",
     lambda h: h.get("net_tx_bps")),
    ("cp_host_disk_read_bytes_per_second", "Disk reads.", lambda h: h.get("disk_read_bps")),
    ("cp_host_disk_write_bytes_per_second", "Disk writes.", lambda h: h.get("disk_write_bps")),
]  # fmt: skip

JOB: list[tuple[str, str, str]] = [
    ("cp_job_gpus", "GPUs a job holds on a host.", "gpus"),
    ("cp_job_gpu_utilization_percent", "Mean utilization of a job's GPUs on a host.", "util"),
    ("cp_job_gpu_memory_used_bytes", "GPU memory of a job's processes on a host.", "mem_used"),
    ("cp_job_gpu_power_watts", "Power of a job's GPUs on a host.", "power_w"),
    ("cp_job_cpu_percent", "CPU of a job's processes on a host (% of one core).", "cpu"),
    ("cp_job_memory_rss_bytes", "Resident memory of a job's processes on a host.", "rss"),
]


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, Any]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self, name: str, kind: str, help_text: str, samples: Iterable[tuple[dict, Any]]
    ) -> None:
        rows = [(labels, value) for labels, value in samples if value is not None]
        if not rows:
            return
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        self.lines.extend(f"{name}{_labels(labels)} {_number(value)}" for labels, value in rows)


def _gpu_labels(frame: dict, gpu: dict, driver: str) -> dict[str, Any]:
    labels = {
        "gpu": gpu["index"],
        "UUID": gpu["uuid"],
        "pci_bus_id": gpu.get("pci_bus_id") or "",
        "device": f"nvidia{gpu['index']}",
        "modelName": gpu.get("name") or "",
        "Hostname": frame["host"]["name"],
        "DCGM_FI_DRIVER_VERSION": driver,
    }
    holder = gpu.get("holder")
    if holder and holder.get("kind") == "job":
        labels["job"] = holder["id"]
        labels["project"] = holder["project"]
    return labels


# dcgm-exporter reports framebuffer memory per MIG instance too, with the parent GPU's
# labels plus GPU_I_ID and GPU_I_PROFILE.
MIG_MEMORY: dict[str, Callable[[dict], Any]] = {
    "DCGM_FI_DEV_FB_USED": lambda m: m.get("mem_used"),
    "DCGM_FI_DEV_FB_FREE": lambda m: (
        None
        if m.get("mem_total") is None or m.get("mem_used") is None
        else m["mem_total"] - m["mem_used"]
    ),
}
_PROFILE = re.compile(r"\b\d+g\.\d+gb\b")


def _mig_rows(
    gpus: list[tuple[dict, dict, str]], read: Callable[[dict], Any]
) -> list[tuple[dict, Any]]:
    rows = []
    for frame, gpu, driver in gpus:
        for mig in gpu.get("mig") or []:
            value = read(mig)
            profile = _PROFILE.search(mig.get("name") or "")
            labels = {
                **_gpu_labels(frame, gpu, driver),
                "GPU_I_ID": mig.get("gpu_instance", mig["index"]),
                "GPU_I_PROFILE": profile.group(0) if profile else mig.get("name") or "",
            }
            rows.append((labels, None if value is None else value / MIB))
    return rows


def render() -> str:
    """The whole exposition, from the latest store and the database."""
    out = _Text()
    workers = list(Worker.objects.values_list("pk", "name", "driver_version", "stopped_at",
                                              "last_heartbeat_at"))  # fmt: skip
    online = {pk for pk in Worker.objects.online().values_list("pk", flat=True)}
    latest = store.latest(sorted(online))
    frames = [latest[pk] for pk in sorted(latest)]
    drivers = {pk: driver for pk, _, driver, _, _ in workers}
    gpus = [(f, g, drivers.get(f["host"]["id"], "")) for f in frames for g in f["gpus"]]
    for name, kind, help_text, read in DCGM:
        rows = [(_gpu_labels(f, g, d), read(g)) for f, g, d in gpus if g.get("ok", True)]
        if name in MIG_MEMORY:
            rows += _mig_rows(gpus, MIG_MEMORY[name])
        out.family(name, kind, help_text, rows)
    out.family(
        "cp_gpu_ok",
        "gauge",
        "1 while NVML reads the GPU, 0 when its calls fail (e.g. GPU is lost).",
        ((_gpu_labels(f, g, d), int(bool(g.get("ok", True)))) for f, g, d in gpus),
    )
    out.family(
        "cp_worker_up",
        "gauge",
        "1 while a worker host heartbeats.",
        (({"Hostname": name}, int(pk in online)) for pk, name, _, _, _ in workers),
    )
    for name, help_text, read in HOST:
        out.family(
            name,
            "gauge",
            help_text,
            (({"Hostname": f["host"]["name"]}, read(f["host_metrics"])) for f in frames),
        )
    for name, key, help_text in (
        ("cp_telemetry_agent_cpu_percent", "cpu_percent", "The agent's CPU, % of one core."),
        ("cp_telemetry_sample_seconds", "sample_ms", "Time to read one sample."),
        ("cp_telemetry_tick_seconds", "tick_ms", "Time of one whole tick (read + send + write)."),
    ):
        scale = 1000 if key.endswith("_ms") else 1
        out.family(
            name,
            "gauge",
            help_text,
            (
                ({"Hostname": f["host"]["name"]}, f["agent"][key] / scale)
                for f in frames
                if f.get("agent", {}).get(key) is not None
            ),
        )
    _jobs(out, frames)
    _deployments(out)
    return "\n".join(out.lines) + "\n" + gateway_metrics()


def gateway_metrics() -> str:
    """The gateway's own series (``cp_gateway_*``) when it runs in this process (``/v1``
    on the web server); a gateway run alone serves its own ``/metrics``."""
    from serving.gateway.app import render_metrics

    return render_metrics().decode()


DEPLOYMENT_HISTOGRAMS = (
    ("cp_deployment_request_latency_seconds", "latency", "Request latency at the replicas."),
    ("cp_deployment_time_to_first_token_seconds", "ttft", "Time to the first token."),
    ("cp_deployment_inter_token_latency_seconds", "itl", "Time between streamed tokens."),
)


def _deployments(out: _Text) -> None:
    """Per deployment: replicas by state, and what its replicas served (summed from their
    own /metrics by the controller; totals since the deployment was created)."""
    from serving.deployments import stats
    from serving.models import REPLICA_LIVE, Deployment, Replica

    deployments = list(
        Deployment.objects.exclude(state="DELETED").values_list(
            "pk", "name", "project__name", "replicas"
        )
    )
    if not deployments:
        return
    counts: dict[tuple[int, str], int] = {}
    for dep_id, state in Replica.objects.filter(
        deployment_id__in=[d[0] for d in deployments], state__in=REPLICA_LIVE
    ).values_list("deployment_id", "state"):
        counts[(dep_id, state)] = counts.get((dep_id, state), 0) + 1
    labels = {pk: {"deployment": name, "project": project} for pk, name, project, _ in deployments}
    out.family(
        "cp_deployment_replicas",
        "gauge",
        "Replicas of a deployment by state.",
        (
            ({**labels[pk], "state": st}, counts.get((pk, st), 0))
            for pk in labels
            for st in REPLICA_LIVE
        ),
    )
    out.family(
        "cp_deployment_replicas_wanted",
        "gauge",
        "Replicas the deployment (or its autoscaler) asks for.",
        ((labels[pk], wanted) for pk, _, _, wanted in deployments),
    )
    figures = {pk: stats.cached(pk) for pk in labels}
    totals = {pk: f.get("totals") or {} for pk, f in figures.items()}
    out.family(
        "cp_deployment_requests_total",
        "counter",
        "Requests its replicas answered, by HTTP status.",
        (
            ({**labels[pk], "status": status}, n)
            for pk, t in totals.items()
            for status, n in sorted((t.get("requests") or {}).items())
        ),
    )
    for name, key, help_text in (
        ("cp_deployment_generated_tokens_total", "tokens", "Tokens generated."),
        ("cp_deployment_prompt_tokens_total", "prompt_tokens", "Prompt tokens processed."),
    ):
        out.family(
            name, "counter", help_text, ((labels[pk], t.get(key)) for pk, t in totals.items() if t)
        )
    for name, key, help_text in (
        ("cp_deployment_queue_depth", "queue", "Requests waiting at its replicas."),
        ("cp_deployment_requests_in_flight", "in_flight", "Requests being served."),
        ("cp_deployment_batch_size", "batch_size", "Mean sequences per engine step, last pass."),
    ):
        out.family(
            name, "gauge", help_text, ((labels[pk], f.get(key)) for pk, f in figures.items())
        )
    for name, key, help_text in DEPLOYMENT_HISTOGRAMS:
        rows = [(pk, t["hists"][key]) for pk, t in totals.items() if key in (t.get("hists") or {})]
        if not rows:
            continue
        out.lines.append(f"# HELP {name} {help_text}")
        out.lines.append(f"# TYPE {name} histogram")
        for pk, (bounds, cumulative, total, count) in rows:
            for bound, n in zip(bounds, cumulative, strict=True):
                le = "+Inf" if bound == float("inf") else repr(float(bound))
                out.lines.append(f"{name}_bucket{_labels({**labels[pk], 'le': le})} {_number(n)}")
            out.lines.append(f"{name}_sum{_labels(labels[pk])} {_number(total)}")
            out.lines.append(f"{name}_count{_labels(labels[pk])} {_number(count)}")


def _jobs(out: _Text, frames: list[dict]) -> None:
    counts = dict(Job.objects.values_list("state").annotate(n=Count("id")))
    out.family(
        "cp_jobs",
        "gauge",
        "Jobs by state.",
        (({"state": state}, counts.get(state, 0)) for state in JobState.values),
    )
    pending = Job.objects.filter(state=JobState.PENDING)
    out.family("cp_queue_depth", "gauge", "Jobs waiting to be placed.", [({}, pending.count())])
    out.family(
        "cp_queue_gpus",
        "gauge",
        "GPUs the waiting jobs ask for.",
        [({}, sum(n * g for n, g in pending.values_list("nodes", "gpus_per_node")))],
    )
    for name, help_text, key in JOB:
        out.family(
            name,
            "gauge",
            help_text,
            (
                (
                    {"job": h["id"], "project": h["project"], "Hostname": f["host"]["name"]},
                    len(h["gpus"]) if key == "gpus" else h.get(key),
                )
                for f in frames
                for h in f.get("holders", [])
                if h["kind"] == "job"
            ),
        )
    energy = (
        JobUsage.objects.filter(job__state__in=list(JOB_ACTIVE))
        .values("job_id", "job__project__name")
        .annotate(joules=Sum("joules"))
    )
    out.family(
        "cp_job_energy_joules_total",
        "counter",
        "Energy used by a running job's GPUs so far.",
        (({"job": e["job_id"], "project": e["job__project__name"]}, e["joules"]) for e in energy),
    )
