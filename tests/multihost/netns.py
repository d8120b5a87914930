"""Several "hosts" on one machine, each with a network of its own: Linux network
namespaces joined by a bridge, as a rack's switch joins machines.

    sudo .venv/bin/python -m tests.multihost.netns --hosts 3     # Ctrl-C tears it down

Each host is a namespace with one interface (``eth0``) on the bridge's subnet, its own
loopback and a default route through the bridge. The control plane's services (its
database, Redis) listen on the machine's loopback, which a namespace cannot see, so a
forwarder in the machine's own namespace listens on the bridge's address and passes each
connection on: a host reaches them only through its link, and cutting the link
(``cut(name)``: the interface down) cuts it off from everything, as a failed switch port
or cable does. Storage is the machine's own filesystem, shared by every host the way an
NFS mount would be (docs/deploy.md says what a real shared filesystem needs).

Needs root and iproute2 (``ip``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


def available() -> str:
    """Why namespaces cannot be made here ('' when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is missing"
    probe = f"cpprobe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


def ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


@dataclass
class Host:
    name: str
    namespace: str
    address: str
    interface: str = "eth0"

    def wrap(self) -> tuple[str, ...]:
        """The prefix that runs a command on this host."""
        return ("ip", "netns", "exec", self.namespace)

    def pids(self) -> set[int]:
        out = subprocess.run(["ip", "netns", "pids", self.namespace], capture_output=True,
                             text=True).stdout  # fmt: skip
        return {int(p) for p in out.split()}


class Forwarder(threading.Thread):
    """TCP forwarding from ``listen_host:port`` to ``target``, one per service."""

    def __init__(self, listen_host: str) -> None:
        super().__init__(daemon=True, name="netns-forwarder")
        self.listen_host = listen_host
        self.loop = asyncio.new_event_loop()
        self.servers: list[asyncio.AbstractServer] = []
        self.start()

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def forward(self, target_host: str, target_port: int) -> int:
        """Listen on the bridge for ``target``; returns the port."""

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            with contextlib.suppress(Exception):
                writer.close()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection(target_host, target_port)
            except OSError:
                writer.close()
                return
            await asyncio.gather(
                pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True
            )

        async def serve() -> int:
            server = await asyncio.start_server(handle, self.listen_host, 0)
            self.servers.append(server)
            return server.sockets[0].getsockname()[1]

        return asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10)

    def through(self, url: str) -> str:
        """``url`` (redis://, postgres://, amqp://) rewritten to reach its server through
        the bridge."""
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        port = self.forward(host, parts.port or _DEFAULT_PORTS[parts.scheme.split("+")[0]])
        credentials = parts.netloc.rpartition("@")[0]
        netloc = (credentials + "@" if credentials else "") + f"{self.listen_host}:{port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def close(self) -> None:
        async def stop() -> None:
            # Connections cut off here are expected: keep asyncio's complaints out of logs.
            self.loop.set_exception_handler(lambda loop, context: None)
            for server in self.servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:  # the connections still open
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)


_DEFAULT_PORTS = {"redis": 6379, "rediss": 6380, "postgres": 5432, "postgresql": 5432,
                  "amqp": 5672}  # fmt: skip


@dataclass
class Network:
    """A bridge and the hosts on it; ``close()`` removes everything it made."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:5])
    hosts: dict[str, Host] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.subnet = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"
        self.gateway = f"{self.subnet}.1"
        self.bridge = f"cpbr{self.tag}"
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        self.forwarder = Forwarder(self.gateway)

    def add_host(self, name: str) -> Host:
        index = len(self.hosts) + 11
        host = Host(name, f"cp{self.tag}-{name}", f"{self.subnet}.{index}")
        outside = f"cpv{self.tag}{index}"
        ip("netns", "add", host.namespace)
        # No name server on this network: lookups (gloo and torchrun resolve host names)
        # fail at once instead of timing out towards the machine's resolver, which the
        # namespace cannot reach. `ip netns exec` mounts these files over /etc's.
        etc = Path("/etc/netns") / host.namespace
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        ip("link", "add", outside, "type", "veth", "peer", "name", "cpin" + self.tag)
        ip("link", "set", "cpin" + self.tag, "netns", host.namespace)
        ip("link", "set", "cpin" + self.tag, "name", host.interface, ns=host.namespace)
        ip("link", "set", outside, "master", self.bridge)
        ip("link", "set", outside, "up")
        ip("addr", "add", f"{host.address}/24", "dev", host.interface, ns=host.namespace)
        ip("link", "set", host.interface, "up", ns=host.namespace)
        ip("link", "set", "lo", "up", ns=host.namespace)
        ip("route", "add", "default", "via", self.gateway, ns=host.namespace)
        self.hosts[name] = host
        return host

    def cut(self, name: str) -> None:
        """The host's link goes down: it reaches nothing and nothing reaches it."""
        ip("link", "set", self.hosts[name].interface, "down", ns=self.hosts[name].namespace)

    def restore(self, name: str) -> None:
        host = self.hosts[name]
        ip("link", "set", host.interface, "up", ns=host.namespace)
        ip("route", "replace", "default", "via", self.gateway, ns=host.namespace)

    def close(self) -> None:
        self.forwarder.close()
        for host in self.hosts.values():
            for pid in host.pids():  # anything left running on the host
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / host.namespace, ignore_errors=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        self.hosts.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--forward", action="append", default=[],
                        help="a service URL to reach through the bridge (repeatable)")  # fmt: skip
    args = parser.parse_args()
    reason = available()
    if reason:
        raise SystemExit(reason)
    network = Network()
    try:
        for i in range(1, args.hosts + 1):
            host = network.add_host(f"h{i}")
            print(f"{host.name}: {host.address} (namespace {host.namespace})")
        for url in args.forward:
            print(f"{url} -> {network.forwarder.through(url)}")
        first = next(iter(network.hosts.values()))
        print(
            "\nstart a worker on a host, e.g.:\n"
            f"  CP_HOSTNAME={first.name} CP_WORKER_ADDRESS={first.address} "
            f"CP_WORKER_NET_IFNAME={first.interface} DATABASE_URL=... REDIS_URL=... \\\n"
            f"  {' '.join(first.wrap())} .venv/bin/celery -A controlplane worker\n"
            f"cut a host's link: ip -n {first.namespace} link set eth0 down\n"
            "Ctrl-C removes the namespaces and the bridge."
        )
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: tear down
            while True:
                time.sleep(3600)
    finally:
        network.close()


if __name__ == "__main__":
    main()
