"""What this host is: name, address, CPUs, memory and GPUs (through NVML)."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

import psutil
from django.conf import settings

from controlplane.cluster.services import GpuSpec, HostInfo
from monitoring.nvml import nvml
from workers.runtime import containers, sandbox

VERSION = "0.1.0"


def reachable_address(broker_url: str) -> str:
    """The address other hosts can reach this one at.

    ``CP_WORKER_ADDRESS`` when set; else the local address of the route to the broker
    (a UDP "connect" sends nothing), which is loopback when the broker is local.
    """
    if settings.WORKER_ADDRESS:
        return settings.WORKER_ADDRESS
    host = urlparse(broker_url).hostname or "127.0.0.1"
    try:
        target = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)[0]
        with socket.socket(target[0], socket.SOCK_DGRAM) as sock:
            sock.connect(target[4])
            return sock.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def collect(node: str = "") -> HostInfo:
    """Everything a worker reports when it registers."""
    nvml.start()
    gpus = [
        GpuSpec(
            index=g["index"],
            uuid=g["uuid"],
            name=g["name"],
            memory_total=g["memory_total"],
            pci_bus_id=g["pci_bus_id"],
        )
        for g in nvml.gpus()
    ]
    return HostInfo(
        name=settings.HOSTNAME,
        queue=settings.HOST_QUEUE,
        address=reachable_address(settings.BROKER_URL),
        node=node,
        pid=os.getpid(),
        version=VERSION,
        cpu_count=os.cpu_count() or 1,
        memory_bytes=psutil.virtual_memory().total,
        cpu_slots=settings.WORKER_CPU_SLOTS,
        concurrency=settings.WORKER_CONCURRENCY,
        nvml_status=nvml.status,
        driver_version=nvml.driver_version,
        sandbox=sandbox.status(),
        container_runtime=containers.describe(),
        gpus=gpus,
    )
