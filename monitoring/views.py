"""Telemetry pages (server-rendered with the latest readings, so the first paint needs no
websocket round trip; plotly.js then keeps them live) and ``/metrics``.

``/metrics`` answers loopback clients freely unless ``CP_METRICS_LOOPBACK_OPEN=false``;
anyone else must send ``Authorization: Bearer <CP_METRICS_TOKEN>`` (and with no token
configured, only loopback can scrape).
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.cache import never_cache

from controlplane import time_ranges
from controlplane.cluster.models import Gpu, Worker
from controlplane.tenancy.auth import bearer_from_header, client_ip
from monitoring import exporter, queries

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _percent(part: Any, whole: Any) -> float | None:
    if part is None or not whole:
        return None
    return round(100 * part / whole, 1)


def _gpu_view(gpu: dict[str, Any], inventory: dict[tuple[int, int], int], host_id: int) -> dict:
    return {
        **gpu,
        "id": inventory.get((host_id, gpu["index"])),
        "mem_pct": _percent(gpu.get("mem_used"), gpu.get("mem_total")),
    }


def _host_views(frames: list[dict], workers: list[Worker]) -> list[dict[str, Any]]:
    inventory = {
        (g.worker_id, g.index): g.pk
        for g in Gpu.objects.filter(worker__in=workers).only("pk", "worker_id", "index")
    }
    by_id = {f["host"]["id"]: f for f in frames}
    views = []
    for worker in workers:
        frame = by_id.get(worker.pk)
        metrics = (frame or {}).get("host_metrics") or {}
        views.append(
            {
                "worker": worker,
                "frame": frame,
                "metrics": metrics,
                "mem_pct": _percent(metrics.get("mem_used"), metrics.get("mem_total")),
                "gpus": [_gpu_view(g, inventory, worker.pk) for g in (frame or {}).get("gpus", [])],
            }
        )
    return views


@login_required
def cluster_page(request: HttpRequest) -> HttpResponse:
    visible = queries.visible_projects(request.user)
    workers = list(Worker.objects.online())
    frames = queries.latest_frames([w.pk for w in workers], visible)
    hosts = _host_views(frames, workers)
    return render(
        request,
        "monitoring/cluster.html",
        {
            "hosts": hosts,
            "gpu_count": sum(len(h["gpus"]) for h in hosts),
            "interval": settings.TELEMETRY_INTERVAL,
            "time_range": _picker(request),
        },
    )


def _picker(request: HttpRequest) -> dict[str, Any]:
    """The telemetry pages' range picker: 15 min is the live window, longer is history."""
    return time_ranges.picker(request, time_ranges.TELEMETRY, "15m", live=True)


def _page(worker: Worker, gpu: Gpu | None) -> dict[str, Any]:
    """What the page's script needs: ids, the GPU it is about, the interval."""
    return {
        "worker_id": worker.pk,
        "gpu_index": None if gpu is None else gpu.index,
        "gpu_ids": {str(i): pk for i, pk in worker.gpus.values_list("index", "pk")},
        "interval": settings.TELEMETRY_INTERVAL,
    }


@login_required
def host_page(request: HttpRequest, worker_id: int) -> HttpResponse:
    worker = get_object_or_404(Worker, pk=worker_id)
    visible = queries.visible_projects(request.user)
    [host] = _host_views(queries.latest_frames([worker.pk], visible), [worker])
    return render(
        request,
        "monitoring/host.html",
        {
            "host": host,
            "worker": worker,
            "gpu": None,
            "page": _page(worker, None),
            "time_range": _picker(request),
        },
    )


@login_required
def gpu_page(request: HttpRequest, gpu_id: int) -> HttpResponse:
    gpu = get_object_or_404(Gpu.objects.select_related("worker"), pk=gpu_id)
    visible = queries.visible_projects(request.user)
    [host] = _host_views(queries.latest_frames([gpu.worker_id], visible), [gpu.worker])
    reading = next((g for g in host["gpus"] if g["index"] == gpu.index), None)
    return render(
        request,
        "monitoring/host.html",
        {
            "host": host,
            "worker": gpu.worker,
            "gpu": gpu,
            "reading": reading,
            "page": _page(gpu.worker, gpu),
            "time_range": _picker(request),
        },
    )


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text; see the module docstring for who may scrape."""
    if not (settings.METRICS_LOOPBACK_OPEN and _is_loopback(client_ip(request))):
        token = settings.METRICS_TOKEN
        if not token:
            return HttpResponse(
                "Scraping /metrics from another host needs CP_METRICS_TOKEN set on the server.\n",
                status=403,
                content_type="text/plain",
            )
        given = bearer_from_header(request.META.get("HTTP_AUTHORIZATION")) or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            response = HttpResponse(
                "Send Authorization: Bearer <CP_METRICS_TOKEN>.\n",
                status=401,
                content_type="text/plain",
            )
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    return HttpResponse(exporter.render(), content_type=CONTENT_TYPE)
