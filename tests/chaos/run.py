"""The chaos run of RELIABILITY.md: many jobs on real processes while their hosts die.

The stack of ``make run`` (its own worker runs only control tasks) plus worker hosts on
this machine; a mix of checkpointing jobs (which must all succeed), crashing jobs (which
must fail after their restarts) and long jobs cancelled all at once (a cancel storm); and,
spread over the run, ``kill -9`` of worker hosts (each back 2 s later), ``SIGSTOP`` of a
host past its lease (a stall), and ``kill -9`` of the embedded Redis (the broker; the
stack's supervisor starts it again). Every 0.2 s it counts the live processes of each job
(all hosts are on this machine): two at once is an overlap.

    .venv/bin/python -m tests.chaos.run --jobs 200 --worker-kills 5 --broker-kills 2

prints the figures (and ``--json`` writes them). ``tests/chaos/test_chaos.py`` runs a short
one in ``make test``. With ``REDIS_URL`` set the broker is the machine's Redis, which this
run does not kill: broker kills are then skipped and said so.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sqlite3
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil

from tests.e2e.stack import Stack
from tests.e2e.test_jobs import attempts, logs, submit, wait_for

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}
LEASE_SECONDS = 4.0


@dataclass(frozen=True)
class Plan:
    jobs: int = 200
    worker_kills: int = 5
    broker_kills: int = 2
    stalls: int = 1
    cancels: int = 10
    crashes: int = 10
    hosts: int = 3
    slots: int = 3
    gap_seconds: float = 6.0
    seed: int = 12


@dataclass
class Figures:
    jobs: int = 0
    succeeded: int = 0
    failed_as_meant: int = 0
    cancelled: int = 0
    lost: list[int] = field(default_factory=list)  # meant to succeed, did not
    stuck: list[int] = field(default_factory=list)  # not finished at the deadline
    duplicated: list[int] = field(default_factory=list)  # two SUCCEEDED attempts
    from_scratch: list[int] = field(default_factory=list)  # progress thrown away
    redone_steps: int = 0  # steps run again: done, not yet recorded when the host died
    refinished: int = 0  # jobs whose end ran again (it exited 0 as its host died)
    overlapping: list[int] = field(default_factory=list)  # two live processes at once
    leftover_processes: int = 0
    worker_kills: int = 0
    broker_kills: int = 0
    stalls: int = 0
    stalls_in_a_write: int = 0  # SQLite: the host froze holding the write lock
    broker_skipped: str = ""
    recovery_seconds: dict[str, list[float]] = field(default_factory=dict)
    attempts: int = 0
    wall_seconds: float = 0.0
    notes: dict[int, str] = field(default_factory=dict)  # what went wrong, per job
    api_errors: list[str] = field(default_factory=list)  # answers that were not the API's

    @property
    def clean(self) -> bool:
        bad = self.lost or self.stuck or self.duplicated or self.overlapping or self.from_scratch
        bad = bad or self.api_errors  # an HTML 500 (say) where the API owes JSON
        return not bad and self.leftover_processes == 0


@dataclass
class Job:
    id: int
    tag: str
    kind: str  # "steps" (must succeed), "crash" (must fail), "cancel" (cancelled)


def replay(text: str) -> tuple[int, bool, int]:
    """From a steps job's log: steps run more than once, whether it started again from step
    1 after it had made progress, and how many times it printed its end."""
    seen: Counter = Counter()
    from_scratch = False
    for line in text.splitlines():
        if line.startswith("step "):
            step = int(line.split()[1])
            from_scratch |= step == 1 and bool(seen)
            seen[step] += 1
    return sum(n - 1 for n in seen.values()), from_scratch, text.count("finished all steps")


def _live_tags() -> Counter:
    """How many processes of each chaos job are alive now (the job's own python only)."""
    counts: Counter = Counter()
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "workers.guard" in cmdline or not any(p.endswith("steps.py") for p in cmdline):
            continue
        if "--tag" in cmdline[:-1]:
            counts[cmdline[cmdline.index("--tag") + 1]] += 1
    return counts


def _describe_leftovers() -> list[tuple[str, str]]:
    """(tag, what it is) for each live job process: its state, age and ancestors."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status", "create_time", "ppid"]):
        cmdline = proc.info["cmdline"] or []
        if "workers.guard" in cmdline or not any(p.endswith("steps.py") for p in cmdline):
            continue
        if "--tag" not in cmdline[:-1]:
            continue
        chain = []
        try:
            for parent in proc.parents()[:4]:
                chain.append(f"{parent.pid}:{parent.status()}:{' '.join(parent.cmdline())[:80]}")
        except psutil.Error:
            pass
        age = time.time() - proc.info["create_time"]
        line = (
            f"pid {proc.pid} {proc.info['status']} age {age:.0f}s; "
            f"parents {' <- '.join(chain) or 'none'}"
        )
        found.append((cmdline[cmdline.index("--tag") + 1], line))
    return found


class Watch(threading.Thread):
    """Every 0.2 s: the most live processes each job had at once."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="chaos-watch")
        self.most: Counter = Counter()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            for tag, count in _live_tags().items():
                self.most[tag] = max(self.most[tag], count)


class Chaos:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.random = random.Random(plan.seed)
        self.figures = Figures(jobs=plan.jobs)
        self.jobs: list[Job] = []
        self.hosts = [f"chaos-{chr(ord('a') + i)}" for i in range(plan.hosts)]
        self.stack = Stack(
            fake_gpus=0,
            extra_env={
                "CP_WORKER_CPU_SLOTS": "0",
                "CP_JOB_LEASE_SECONDS": str(LEASE_SECONDS),
                "CP_JOB_LEASE_RENEW_INTERVAL": "0.5",
                "CP_WORKER_HEARTBEAT_INTERVAL": "0.5",
                "CP_WORKER_OFFLINE_AFTER": "2",
                "CP_JOB_START_TIMEOUT": "15",
                "CP_JOB_STOP_GRACE_SECONDS": "5",
                "CP_SCHEDULER_INTERVAL": "0.5",
                "CP_THROTTLE_USER": "100000/min",
            },
        )

    # The stack and its hosts.

    def start(self) -> None:
        stack = self.stack
        stack.start()
        stack.wait_ready()
        for name in self.hosts:
            self.start_host(name)
        minted = stack.manage("create_token", "admin", "--name", "chaos")
        assert minted.returncode == 0, minted.stderr
        stack.api = httpx.Client(
            base_url=stack.url,
            headers={"Authorization": f"Bearer {minted.stdout.strip()}"},
            timeout=60,
            event_hooks={"response": [self.check_answer]},
        )
        wait_for(lambda: self.online() >= set(self.hosts), 60, "the worker hosts")

    def check_answer(self, response: httpx.Response) -> None:
        """Every API answer is JSON (errors included): note any that is not."""
        if response.headers.get("content-type", "").startswith("application/json"):
            return
        response.read()
        request = response.request
        self.figures.api_errors.append(
            f"{request.method} {request.url.path}: {response.status_code} {response.text[:200]}"
        )
        web = self.stack.var_dir / "log" / "web.log"
        Path("/tmp/chaos-api-error.log").write_text(
            f"{self.figures.api_errors[-1]}\n{response.text}\n\n"
            + (web.read_text(errors="replace")[-30000:] if web.exists() else "")
        )

    def start_host(self, name: str) -> None:
        self.stack.start_worker(name, CP_WORKER_CPU_SLOTS=str(self.plan.slots))

    def online(self) -> set[str]:
        workers = self.stack.api.get("/api/v1/workers/").json()["results"]
        return {w["name"] for w in workers if w["status"] == "online"}

    # The jobs.

    def submit_all(self) -> None:
        plan = self.plan
        kinds = ["cancel"] * plan.cancels + ["crash"] * plan.crashes
        kinds += ["steps"] * (plan.jobs - len(kinds))
        self.random.shuffle(kinds)
        for index, kind in enumerate(kinds):
            tag = f"{index}-{uuid.uuid4().hex[:6]}"
            if kind == "crash":
                spec = {"entrypoint": ["python", "crash.py"], "max_restarts": 1}
            else:
                steps = 10_000 if kind == "cancel" else self.random.randint(5, 15)
                spec = {
                    "entrypoint": ["python", "steps.py", "--tag", tag],
                    "env": {"STEPS": str(steps), "STEP_SECONDS": "0.2"},
                    # Enough for every kill and stall of the run to hit it.
                    "max_restarts": plan.worker_kills + plan.stalls + plan.broker_kills + 2,
                }
            created = submit(self.stack, name=f"chaos-{kind}-{index}", **spec)
            self.jobs.append(Job(created["id"], tag, kind))

    def states(self) -> dict[int, str]:
        found: dict[int, str] = {}
        page = 1
        while True:
            answer = self.stack.api.get(
                "/api/v1/jobs/", params={"page": page, "page_size": 1000}
            ).json()
            found.update({j["id"]: j["state"] for j in answer["results"]})
            if not answer.get("next"):
                return found
            page += 1

    def held_by_host(self) -> dict[str, list[int]]:
        """The jobs whose running attempt has a node on each host (one pass over them)."""
        held: dict[str, list[int]] = {host: [] for host in self.hosts}
        for job_id in [i for i, s in self.states().items() if s == "RUNNING"]:
            runs = attempts(self.stack, job_id)
            if runs and runs[-1]["state"] == "RUNNING":
                for host in {n["worker"] for n in runs[-1]["nodes"]} & set(held):
                    held[host].append(job_id)
        return held

    def wait_moved(self, held: list[int], since: float, timeout: float = 90.0) -> float:
        """Seconds from ``since`` until each of ``held`` was given up on its host (its
        attempt no longer RUNNING: back in the queue, or running elsewhere) or ended. When
        it runs again depends on the queue; that it ends well is checked at the end."""
        before = {job_id: len(attempts(self.stack, job_id)) for job_id in held}

        def moved() -> bool:
            states = self.states()
            for job_id, count in before.items():
                if states[job_id] in TERMINAL:
                    continue
                runs = attempts(self.stack, job_id)
                if runs[count - 1]["state"] == "RUNNING":
                    return False
            return True

        wait_for(moved, timeout, f"jobs {held} to be given up on their host", interval=0.25)
        return time.monotonic() - since

    # The faults.

    def victim(self) -> tuple[str, list[int]]:
        """A host that runs some job now (else any), and the jobs it runs."""
        held = self.held_by_host()
        host = self.random.choice([h for h in self.hosts if held[h]] or self.hosts)
        return host, held[host]

    def kill_worker(self) -> None:
        host, held = self.victim()
        killed = time.monotonic()
        self.stack.kill_worker(host)
        time.sleep(2)
        self.start_host(host)
        self.figures.worker_kills += 1
        self.record("worker kill: its jobs requeued", self.wait_moved(held, killed))

    def stall_worker(self) -> None:
        host, held = self.victim()
        frozen = time.monotonic()
        self.stack.freeze_worker(host)
        try:
            if self.sqlite is not None:
                try:
                    seconds = self.wait_moved(held, frozen, timeout=4 * LEASE_SECONDS)
                except AssertionError:
                    if not self.write_locked():
                        raise
                    # SQLite has one writer, and this host froze while it was writing: no
                    # one can write (the reaper neither) until it thaws. Its workload was
                    # fenced all the same (the guard is not frozen); the jobs move once the
                    # host thaws. PostgreSQL ends such a session (sessions.py).
                    self.stack.thaw_worker(host)
                    thawed = time.monotonic()
                    self.figures.stalls_in_a_write += 1
                    self.record("stall inside a SQLite write: requeued after thaw",
                                self.wait_moved(held, thawed))  # fmt: skip
                    self.figures.stalls += 1
                    return
            else:
                seconds = self.wait_moved(held, frozen)
        finally:
            self.stack.thaw_worker(host)
        self.figures.stalls += 1
        self.record("stall: its jobs requeued", seconds)

    @property
    def sqlite(self) -> Path | None:
        url = self.stack.env.get("DATABASE_URL", "")
        if url.startswith("postgres"):
            return None
        return self.stack.var_dir / "db.sqlite3"

    def write_locked(self) -> bool:
        """Whether some process holds the SQLite database's write lock now."""
        probe = sqlite3.connect(self.sqlite, timeout=0.5)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.rollback()
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            probe.close()

    def kill_broker(self) -> None:
        if "REDIS_URL" in self.stack.env:
            self.figures.broker_skipped = "the broker is the machine's Redis: not killed"
            return
        pid = self.stack.program_pid("redis")
        psutil.Process(pid).kill()
        killed = time.monotonic()
        wait_for(lambda: self.stack.program_pid("redis") not in (0, pid), 60, "Redis back")
        self.stack.wait_ready(timeout=60)
        self.figures.broker_kills += 1
        self.record("broker kill: ready again", time.monotonic() - killed)

    def cancel_storm(self) -> None:
        """Cancel every long job at once, from as many clients."""
        targets = [j.id for j in self.jobs if j.kind == "cancel"]
        answers: list[int] = []

        def cancel(job_id: int) -> None:
            response = self.stack.api.post(f"/api/v1/jobs/{job_id}/cancel/")
            answers.append(response.status_code)

        threads = [threading.Thread(target=cancel, args=(i,)) for i in targets]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(code < 300 for code in answers), answers

    def record(self, what: str, seconds: float) -> None:
        self.figures.recovery_seconds.setdefault(what, []).append(round(seconds, 2))

    # The run.

    def run(self) -> Figures:
        plan = self.plan
        started = time.monotonic()
        watch = Watch()
        watch.start()
        self.submit_all()
        faults = ["worker"] * plan.worker_kills + ["broker"] * plan.broker_kills
        faults += ["stall"] * plan.stalls
        self.random.shuffle(faults)
        faults.insert(len(faults) // 2, "cancel")
        for fault in faults:
            time.sleep(plan.gap_seconds)
            {
                "worker": self.kill_worker,
                "broker": self.kill_broker,
                "stall": self.stall_worker,
                "cancel": self.cancel_storm,
            }[fault]()
        deadline = time.monotonic() + max(240.0, plan.jobs * 3.0)
        while time.monotonic() < deadline:
            states = self.states()
            if all(states[j.id] in TERMINAL for j in self.jobs):
                break
            time.sleep(1)
        watch.stopped.set()
        watch.join()
        self.judge(self.states(), watch.most)
        self.figures.wall_seconds = round(time.monotonic() - started, 1)
        return self.figures

    def judge(self, states: dict[int, str], most: Counter) -> None:
        figures = self.figures
        for job in self.jobs:
            state = states[job.id]
            if state not in TERMINAL:
                figures.stuck.append(job.id)
                continue
            runs = attempts(self.stack, job.id)
            figures.attempts += len(runs)
            if most[job.tag] > 1:
                figures.overlapping.append(job.id)
            if job.kind == "steps":
                text = logs(self.stack, job.id)
                redone, from_scratch, finished = replay(text)
                figures.redone_steps += redone
                figures.refinished += finished > 1
                note = json.dumps([[r["state"], r["reason"], r["resume_from"]] for r in runs])
                if state != "SUCCEEDED":
                    figures.lost.append(job.id)
                elif sum(r["state"] == "SUCCEEDED" for r in runs) != 1:
                    figures.duplicated.append(job.id)
                elif from_scratch:
                    figures.from_scratch.append(job.id)
                else:
                    figures.succeeded += 1
                    note = ""
                if note:
                    figures.notes[job.id] = f"{note}\n{text[-2000:]}"
            elif job.kind == "crash":
                if state == "FAILED":
                    figures.failed_as_meant += 1
                else:
                    figures.lost.append(job.id)
            elif state == "CANCELLED":
                figures.cancelled += 1
            else:
                figures.lost.append(job.id)
        # Nothing of any job may outlive it.
        try:
            wait_for(lambda: not _live_tags(), 20, "no job process left")
        except AssertionError:
            figures.leftover_processes = sum(_live_tags().values())
            by_tag = {job.tag: job for job in self.jobs}
            for tag, line in _describe_leftovers():
                job = by_tag.get(tag)
                key = job.id if job else -1
                runs = attempts(self.stack, job.id) if job else []
                note = json.dumps([[r["state"], r["reason"], [n["worker"] for n in r["nodes"]]]
                                   for r in runs])  # fmt: skip
                figures.notes[key] = f"left behind: {line}\nattempts: {note}"

    def close(self) -> None:
        self.stack.close()


def run(plan: Plan) -> Figures:
    chaos = Chaos(plan)
    try:
        chaos.start()
        return chaos.run()
    finally:
        chaos.close()


def table(figures: Figures) -> str:
    rows = [
        ("jobs", figures.jobs),
        ("succeeded (checkpointing jobs)", figures.succeeded),
        ("failed as meant (crashing jobs)", figures.failed_as_meant),
        ("cancelled (cancel storm)", figures.cancelled),
        ("lost", len(figures.lost)),
        ("duplicated (two SUCCEEDED attempts)", len(figures.duplicated)),
        ("started again from scratch", len(figures.from_scratch)),
        ("steps run again (done, not yet recorded)", figures.redone_steps),
        ("ends run again (exited 0 as its host died)", figures.refinished),
        ("overlapping attempts", len(figures.overlapping)),
        ("stuck", len(figures.stuck)),
        ("processes left behind", figures.leftover_processes),
        ("attempts", figures.attempts),
        ("worker kills / stalls / broker kills",
         f"{figures.worker_kills} / {figures.stalls} / {figures.broker_kills}"),
    ]  # fmt: skip
    for what, seconds in figures.recovery_seconds.items():
        rows.append((f"{what} (s, max)", f"{max(seconds):.2f} of {seconds}"))
    if figures.broker_skipped:
        rows.append(("broker kills skipped", figures.broker_skipped))
    if figures.stalls_in_a_write:
        rows.append(("stalls inside a SQLite write", figures.stalls_in_a_write))
    if figures.api_errors:
        rows.append(
            ("API answers not JSON", f"{len(figures.api_errors)}, first: {figures.api_errors[0]}")
        )
    rows.append(("wall seconds", figures.wall_seconds))
    rows += [(f"job {job_id}", note) for job_id, note in figures.notes.items()]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _interrupted(signum: int, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # so the stack and its hosts are stopped


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupted)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Plan()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    plan = Plan(**{k: getattr(args, k) for k in asdict(defaults)})
    figures = run(plan)
    print(table(figures))
    if args.json:
        args.json.write_text(json.dumps(asdict(figures), indent=1))
    return 0 if figures.clean else 1


if __name__ == "__main__":
    sys.exit(main())
