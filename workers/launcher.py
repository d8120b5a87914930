"""The launcher: runs one node of an attempt on this host and supervises it to the end.

It claims the node (a duplicate start message finds it claimed and does nothing),
prepares it through the workload runtime (``workers.runtime``: the Python environment the
spec asks for, built with uv and cached, or a container image; the node's directories,
handed to the project's uid), builds the processes' environment from scratch (never the
control plane's own secrets), starts ``torch.distributed.run`` (or, for a one-process job,
the entrypoint itself with the same variables torchrun would set) under ``workers.guard``
inside a bubblewrap sandbox (see workers/runtime/sandbox.py), and until the processes exit:
streams their output into log chunks, turns SDK events into metrics and checkpoints
(each write fenced by the node's claim: a run that lost its lease writes nothing), and
stops the processes when asked (cancel, preemption, max_runtime, a failed peer node, this
worker shutting down): SIGTERM, then SIGKILL after the grace period. The lease is renewed
on a thread of its own (workers/lease.py); when renewals fail the node stops itself before
the lease can expire. If this worker dies or freezes, the guard kills the processes (see
workers/guard.py).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from django.conf import settings
from django.db import close_old_connections

from controlplane.tenancy import secrets as project_secrets
from jobs import expansion, lifecycle, outputs
from jobs.lifecycle import NodePlan
from jobs.spec import secret_refs
from jobs.states import JobKind, StopReason
from workers import artifacts, host, tbevents
from workers.guard import FENCED_EXIT
from workers.lease import LeaseKeeper, fence_after
from workers.logsplit import LogBuffer
from workers.runtime import containers, environments, sandbox

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parent.parent
PYTHONS = {"python", "python3"}
LOG_FLUSH_SECONDS = 0.1
LOG_CHUNK_BYTES = 32 * 1024
BAR_PROGRESS_SECONDS = 2.0
TB_POLL_SECONDS = 2.0
PIDS_INTERVAL = 1.0  # how often the job's process list is refreshed (for telemetry)
PASS_THROUGH = ("LD_LIBRARY_PATH", "CUDA_HOME", "TZ", "HF_HOME", "HF_HUB_OFFLINE")
PASS_THROUGH_PREFIXES = ("NCCL_",)

#: Set when this worker is shutting down: running nodes stop and their jobs requeue.
DRAINING = threading.Event()


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address if address not in ("", "0.0.0.0") else "", 0))  # noqa: S104
        return sock.getsockname()[1]


def is_loopback(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "localhost")


def build_command(
    plan: NodePlan, master: tuple[str, int] | None, python: str | None = None, image: bool = False
) -> list[str]:
    """The argv to run: the entrypoint itself, or under torchrun for several processes.
    ``python``: the interpreter (the node's environment's; the worker's by default).
    ``image``: a program that is not Python is the image's (found on its PATH), not a file
    of the job's code."""
    python = python or sys.executable
    entry = plan.entrypoint
    if entry[0] in PYTHONS and entry[1] == "-m":
        target, rest, kind = entry[2], entry[3:], "module"
    elif entry[0] in PYTHONS:
        target, rest, kind = entry[1], entry[2:], "script"
    else:
        target, rest, kind = entry[0], entry[1:], "exec"
    args = [*rest, *plan.args]
    if master is None:  # one process: no torchrun, same environment variables
        if kind == "module":
            return [python, "-m", target, *args]
        if kind == "script":
            return [python, target, *args]
        return [target if image else str(Path(plan.work_dir) / target), *args]
    torchrun = [
        python,
        "-m",
        "torch.distributed.run",
        f"--nnodes={plan.nodes}",
        f"--node-rank={plan.rank}",
        f"--nproc-per-node={plan.procs_per_node}",
        f"--master-addr={master[0]}",
        f"--master-port={master[1]}",
        "--max-restarts=0",
    ]
    if kind == "module":
        return [*torchrun, "-m", target, *args]
    if kind == "script":
        return [*torchrun, target, *args]
    program = target if image else str(Path(plan.work_dir) / target)
    return [*torchrun, "--no-python", program, *args]


def build_env(
    plan: NodePlan,
    master: tuple[str, int] | None,
    events_file: Path,
    venv: Path | None = None,
    sandboxed: bool = False,
    sdk_root: str = str(PROJECT_ROOT),
) -> dict[str, str]:
    """The processes' environment, from scratch: nothing of the worker's own."""
    venv_bin = str((venv or Path(sys.executable).parent.parent) / "bin")
    env = {
        "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
        # In the sandbox the worker's home is not there: the working directory is home.
        "HOME": plan.work_dir if sandboxed else os.environ.get("HOME", plan.work_dir),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([plan.work_dir, sdk_root]),
    }
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
    if sandboxed:
        env["USER"] = env["LOGNAME"] = sandbox.SANDBOX_USER
    for name, value in os.environ.items():
        if name in PASS_THROUGH or name.startswith(PASS_THROUGH_PREFIXES):
            env[name] = value
    address = master[0] if master else "127.0.0.1"
    ifname = settings.WORKER_NET_IFNAME or ("lo" if is_loopback(address) else "")
    if ifname:
        env["GLOO_SOCKET_IFNAME"] = env["NCCL_SOCKET_IFNAME"] = ifname
    # The Hugging Face Trainer's TensorBoard logs (--report_to tensorboard) go with the
    # job's outputs, where the launcher reads them as metrics; a spec may say elsewhere.
    env["TENSORBOARD_LOGGING_DIR"] = str(Path(plan.output_dir) / "tensorboard")
    env.update(plan.env)
    env.update(
        {
            "CP_JOB_ID": str(plan.job_id),
            "CP_ATTEMPT_ID": str(plan.attempt_id),
            "CP_ATTEMPT": str(plan.attempt),
            "CP_NODE_RANK": str(plan.rank),
            "CP_NODES": str(plan.nodes),
            "CP_ATTEMPT_TOKEN": plan.token,
            "CP_CHECKPOINT_DIR": plan.checkpoint_dir,
            "CP_EVENTS_FILE": str(events_file),
            "CP_WORK_DIR": plan.work_dir,
            "CP_OUTPUT_DIR": plan.output_dir,
            "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in plan.gpu_indices),
        }
    )
    if plan.resume_from:
        env["CP_RESUME_FROM"] = plan.resume_from
    if plan.kind == JobKind.REPLICA:
        # A service: it binds this host's address (the gateway reaches it there) and
        # answers only callers that send its key; models are local files, never fetched.
        env["CP_BIND_HOST"] = host.reachable_address(settings.BROKER_URL)
        env["CP_SERVING_API_KEY"] = plan.service_key
    if plan.kind != JobKind.TRAINING:
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if master is None:  # what torchrun would have set for a world of one
        env.update(
            {
                "RANK": "0",
                "LOCAL_RANK": "0",
                "GROUP_RANK": "0",
                "WORLD_SIZE": "1",
                "LOCAL_WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(free_port("127.0.0.1")),
            }
        )
    return env


class EventTail:
    """Reads the SDK's JSON-lines events file as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self) -> list[dict]:
        try:  # the workload owns the directory: never follow a link it put there
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return []
        with os.fdopen(fd, "rb") as handle:
            if not os.path.isfile(f"/proc/self/fd/{fd}"):
                return []
            handle.seek(self.offset)
            data = handle.read(16 * 1024 * 1024)
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        found = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                found.append(event)
        return found


@dataclass
class Outcome:
    exit_code: int | None
    fenced: bool = False


class NodeRun:
    def __init__(self, attempt_id: int, rank: int) -> None:
        self.attempt_id = attempt_id
        self.rank = rank
        self.plan: NodePlan | None = None
        self.proc: subprocess.Popen | None = None
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self._bar_sent: tuple[int, int] | None = None
        self._bar_at = 0.0
        self.builder: environments.Builder | None = None  # holds the node's environment
        self.container = ""  # the node's container name, for an image job
        self.keeper: LeaseKeeper | None = None
        self.self_fenced = ""  # why the node stopped itself (no lease renewal), if it did
        self._lifeline = threading.Lock()  # the keeper and the main loop both write to it
        self.error = ""  # what the workload said went wrong (an SDK "error" event)

    # --- start -------------------------------------------------------------------------

    def run(self) -> str:
        self.plan = lifecycle.claim_node(self.attempt_id, self.rank, settings.HOSTNAME)
        if self.plan is None:
            return "not claimed (a duplicate start, or the attempt ended)"
        plan = self.plan
        self.keeper = LeaseKeeper(
            plan.node_id, plan.claim, f"node {plan.rank} of attempt {plan.attempt_id}"
        )
        self.keeper.start()
        try:
            return self._run()
        finally:
            self.keeper.close()

    def _run(self) -> str:
        plan, keeper = self.plan, self.keeper
        assert plan is not None and keeper is not None
        try:
            master = self._rendezvous()
            if master is False:
                return "stopped before it started"
            work = self._prepare()
            argv, env = self._runtime(work, master or None)
            self.proc = subprocess.Popen(
                argv,
                cwd=work,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except environments.Stopped:
            self._release()
            # Asked to stop: its exit counts. Cut off (no renewal for too long): the reaper
            # gives it up as LOST, never as an exit 0 that would count as success.
            if keeper.silent_for() < fence_after()[0]:
                lifecycle.finish_node(plan.node_id, plan.claim, 0)
            return "stopped while its environment was prepared"
        except environments.BuildError as exc:
            self._release()
            self._flush_logs([f"[environment] {exc}\n".encode()])
            lifecycle.finish_node(
                plan.node_id,
                plan.claim,
                None,
                f"node {plan.rank}: {exc}",
                stop_reason=StopReason.ENVIRONMENT,
            )
            return "environment failed"
        except Exception as exc:
            self._release()
            log.exception("could not start node %s of attempt %s", self.rank, self.attempt_id)
            lifecycle.finish_node(plan.node_id, plan.claim, None, f"launcher error: {exc}")
            return "failed to start"
        keeper.on_renewed = self._tell_renewed
        lifecycle.set_pid(plan.node_id, plan.claim, self.proc.pid)
        try:
            outcome = self._supervise(EventTail(work / ".cp-events.jsonl"))
        finally:
            self._release()
        if not outcome.fenced and not self.self_fenced and outcome.exit_code != FENCED_EXIT:
            self._keep_outputs(work)
        if outcome.exit_code == FENCED_EXIT and not self.self_fenced:
            self.self_fenced = "its guard stopped it: no lease renewal came in time"
        if self.self_fenced and not outcome.fenced:
            # Not an exit of the workload's own: the job runs again (from its checkpoint).
            lifecycle.finish_node(
                plan.node_id,
                plan.claim,
                outcome.exit_code,
                f"node {plan.rank} on {settings.HOSTNAME} stopped itself: {self.self_fenced}",
                stop_reason=StopReason.LOST,
            )
        elif not outcome.fenced:
            detail = f"node {plan.rank}: {self.error}" if self.error and outcome.exit_code else ""
            lifecycle.finish_node(plan.node_id, plan.claim, outcome.exit_code, detail)
        return f"exited {outcome.exit_code}" + (" (fenced)" if outcome.fenced else "")

    # --- the workload runtime ------------------------------------------------------------

    def _runtime(self, work: Path, master: tuple[str, int] | None) -> tuple[list[str], dict]:
        """The argv and environment of the node's processes: its Python environment (or
        image), in its sandbox, under the guard."""
        plan = self.plan
        assert plan is not None
        secret_vars = {k for k, v in plan.env.items() if isinstance(v, dict)}
        if refs := secret_refs(plan.env):  # project secrets: into this environment only
            try:
                values = project_secrets.reveal(plan.project_id, refs)
            except project_secrets.SecretError as exc:
                raise environments.BuildError(f"secrets: {exc}") from None
            plan.env = {
                k: values[v["secret"]] if isinstance(v, dict) else v for k, v in plan.env.items()
            }
        # ${CP_OUTPUT_DIR} and the like, in the spec's env (a secret's value is left as it
        # is) and args: the job's own directories.
        dirs = {"CP_CHECKPOINT_DIR": plan.checkpoint_dir, "CP_WORK_DIR": plan.work_dir,
                "CP_OUTPUT_DIR": plan.output_dir}  # fmt: skip
        plan.env = {k: v if k in secret_vars else expansion.expand(v, dirs)
                    for k, v in plan.env.items()}  # fmt: skip
        plan.args = [expansion.expand(a, dirs) for a in plan.args]
        events = work / ".cp-events.jsonl"
        image = plan.environment.get("image", "")
        uid = sandbox.uid_for_project(plan.project_id) if sandbox.enabled() or image else None
        ckpt, out = Path(plan.checkpoint_dir), Path(plan.output_dir)
        sandbox.give_to(uid, work, ckpt, out)
        described: dict = {"sandbox": settings.SANDBOX, "uid": uid}
        if image:
            described.update(kind="image", image=image, runtime=containers.describe())
            lifecycle.record_environment(plan.node_id, plan.claim, described)
            self._log(f"[environment] image {image} ({containers.describe()})\n")
            env = build_env(plan, master, events, sandboxed=True, sdk_root="/opt/cp")
            env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            command = build_command(plan, master, python="python", image=True)
            self.container = f"cp-job{plan.job_id}-a{plan.attempt}-n{plan.rank}"
            run = containers.run_argv(
                image,
                command,
                name=self.container,
                env=env,
                work_dir=work,
                mounts=[ckpt, out],
                gpu_indices=plan.gpu_indices,
                host_network=plan.nodes > 1,
                uid=uid,
            )
            host_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
            return [*self._guard(), *run], host_env
        request = environments.request_from_spec(plan.environment, work)
        venv: Path | None = None
        if request is not None:
            self.builder = environments.Builder(self._log, self._keep_alive)
            built = self.builder.ensure(request)
            venv = built.path
            described.update(built.describe())
        else:
            described.update(kind="worker", python=sys.version.split()[0])
        lifecycle.record_environment(plan.node_id, plan.claim, described)
        python = str(venv / "bin" / "python") if venv else sys.executable
        command = build_command(plan, master, python=python)
        sandboxed = sandbox.enabled()
        env = build_env(plan, master, events, venv=venv, sandboxed=sandboxed)
        # -S: the guard needs only the standard library; skipping site saves a good part
        # of its start-up time. It runs inside the sandbox, above the workload.
        guarded = [*self._guard(), *command]
        mounts = [Path(p) for p in plan.mounts or [] if Path(p).is_absolute()]
        layout = sandbox.Layout(
            work_dir=work,
            writable=[ckpt, out],
            readable=([venv] if venv else []) + mounts,
            # Serving workloads run the control plane's own engine (serving/).
            packages=["serving"] if plan.kind != JobKind.TRAINING else [],
            gpu_indices=plan.gpu_indices,
            # A replica must be reachable from the gateway: the host network.
            private_network=plan.nodes == 1 and plan.kind != JobKind.REPLICA,
            hostname=f"job{plan.job_id}-node{plan.rank}",
            uid=uid,
        )
        return sandbox.wrap(guarded, layout), env

    def _guard(self) -> list[str]:
        """The guard's argv, fenced by this node's lease (see workers/guard.py)."""
        assert self.keeper is not None
        term, kill = fence_after()
        fence = f"{term:g},{kill:g},{self.keeper.silent_for():.3f}"
        # -S: the guard needs only the standard library; skipping site saves a good part
        # of its start-up time.
        return [sys.executable, "-S", "-m", "workers.guard", "--fence", fence, "--"]

    def _tell_renewed(self) -> None:
        """The keeper renewed the lease: the guard's deadline moves on."""
        self._write_lifeline(b"R")

    def _write_lifeline(self, data: bytes) -> bool:
        assert self.proc is not None and self.proc.stdin is not None
        with self._lifeline:
            try:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
                return True
            except (OSError, ValueError):  # the guard is gone, or the lifeline closed
                return False

    def _log(self, text: str) -> None:
        self._flush_logs([text.encode()])

    def _keep_alive(self) -> bool:
        """While the environment is prepared: False means stop preparing (fenced, asked
        to stop, or the lease could not be renewed for too long)."""
        keeper = self.keeper
        assert keeper is not None
        return (
            not keeper.fenced.is_set()
            and not keeper.stop
            and not DRAINING.is_set()
            and keeper.silent_for() < fence_after()[0]
        )

    def _release(self) -> None:
        if self.builder is not None:
            self.builder.release()
            self.builder = None

    def _rendezvous(self) -> tuple[str, int] | bool | None:
        """The master address (rank 0 picks and publishes it); None for a one-process job;
        False when the attempt was stopped while waiting."""
        plan = self.plan
        assert plan is not None
        if plan.kind != JobKind.TRAINING or (plan.nodes == 1 and plan.procs_per_node == 1):
            # One process per node: serving workloads hold several CPU slots as threads,
            # and batch shards need no rendezvous.
            return None
        if plan.rank == 0:
            address = (
                "127.0.0.1" if plan.nodes == 1 else host.reachable_address(settings.BROKER_URL)
            )
            master = (address, free_port(address))
            lifecycle.publish_master(plan.attempt_id, *master)
            return master
        deadline = time.monotonic() + settings.JOB_START_TIMEOUT
        keeper = self.keeper
        assert keeper is not None
        while time.monotonic() < deadline:
            master = lifecycle.master_of(plan.attempt_id)
            if master:
                return master
            if keeper.fenced.is_set() or keeper.silent_for() >= fence_after()[0]:
                return False  # not ours, or cut off: the reaper gives the node up (LOST)
            if keeper.stop:
                lifecycle.finish_node(plan.node_id, plan.claim, 0)
                return False
            time.sleep(0.1)
        raise RuntimeError("node 0 never published its rendezvous address")

    def _prepare(self) -> Path:
        plan = self.plan
        assert plan is not None
        work = Path(plan.work_dir)
        if work.exists():
            shutil.rmtree(work)
        if plan.code_dir:
            shutil.copytree(plan.code_dir, work, symlinks=False)
        else:
            work.mkdir(parents=True)
        Path(plan.checkpoint_dir).mkdir(parents=True, exist_ok=True)
        Path(plan.output_dir).mkdir(parents=True, exist_ok=True)
        return work

    def _keep_outputs(self, work: Path) -> None:
        """Rank 0 keeps the declared working-directory dirs as the job's outputs (before it
        says the node ended, so they are there when the job is), and measures them."""
        plan = self.plan
        assert plan is not None
        if plan.rank != 0 or plan.kind == JobKind.REPLICA:
            return
        try:
            left = outputs.storage_left(plan.project_id)
            budget = settings.JOB_OUTPUTS_MAX_BYTES if left is None else max(0, left)
            declared = plan.outputs or []
            kept = artifacts.collect(
                work, declared, Path(plan.output_dir),
                min(budget, settings.JOB_OUTPUTS_MAX_BYTES), settings.JOB_OUTPUTS_MAX_FILES,
            )  # fmt: skip
            if kept.files or kept.left_out:
                self._flush_logs([kept.summary(declared).encode()])
            size = artifacts.tree_size(Path(plan.output_dir))
            outputs.record_outputs_size(plan.job_id, size, fence=self._fence)
        except Exception:
            log.warning("could not keep the outputs of job %s", plan.job_id, exc_info=True)

    # --- supervise ---------------------------------------------------------------------

    def _read_output(self) -> None:
        """Output as it comes (not line by line: a progress bar redraws without a \n)."""
        assert self.proc is not None and self.proc.stdout is not None
        for data in iter(lambda: self.proc.stdout.read1(65536), b""):  # type: ignore[union-attr]
            self.lines.put(data)
        self.lines.put(None)

    def _supervise(self, tail: EventTail) -> Outcome:
        plan, proc, keeper = self.plan, self.proc, self.keeper
        assert plan is not None and proc is not None and keeper is not None
        threading.Thread(target=self._read_output, daemon=True).start()
        output = LogBuffer(LOG_CHUNK_BYTES, LOG_FLUSH_SECONDS)
        watcher = self._event_watcher()
        events_at = time.monotonic() + TB_POLL_SECONDS
        pids_at = time.monotonic() + PIDS_INTERVAL
        term_after, kill_after = fence_after()
        kill_at: float | None = None
        drain_asked = False
        output_done = False
        while True:
            if output_done:  # only the exit is left to wait for
                try:
                    proc.wait(timeout=LOG_FLUSH_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
            else:
                try:
                    data = self.lines.get(timeout=LOG_FLUSH_SECONDS)
                    if data is None:
                        output_done = True
                    else:
                        output.add(data)
                except queue.Empty:
                    pass
            now = time.monotonic()
            if output.due(now):
                self._flush_logs(output.take(now))
                self._bar_progress(output.progress, now)
            self._handle_events(tail.read())
            if watcher is not None and now >= events_at:
                events_at = now + TB_POLL_SECONDS
                self._record_tensorboard(watcher, now)
            if now >= pids_at:  # soon after start too, so telemetry attributes at once
                pids_at = now + PIDS_INTERVAL
                close_old_connections()  # drop a connection the database broke meanwhile
                self._record_pids()
            if keeper.fenced.is_set():
                log.warning("node %s of attempt %s was fenced", plan.rank, plan.attempt_id)
                self._hard_stop()
                return Outcome(exit_code=proc.wait(), fenced=True)
            if DRAINING.is_set() and not drain_asked:
                drain_asked = True
                try:
                    lifecycle.request_stop(plan.node_id, plan.claim, StopReason.DRAIN)
                except Exception:
                    log.warning("could not ask the attempt to stop", exc_info=True)
            stop = keeper.stop or ("drain" if DRAINING.is_set() else "")
            if stop and kill_at is None:
                log.info("stopping node %s of attempt %s: %s", plan.rank, plan.attempt_id, stop)
                self._terminate()
                kill_at = now + settings.JOB_STOP_GRACE_SECONDS
            silent = keeper.silent_for()
            if silent >= term_after and not self.self_fenced:
                # Stop before the control plane may give the node up and start another.
                self.self_fenced = f"no lease renewal for {silent:.1f} s"
                log.warning(
                    "node %s of attempt %s stops itself: %s",
                    plan.rank,
                    plan.attempt_id,
                    self.self_fenced,
                )
                self._terminate()
                deadline = now + kill_after - silent
                kill_at = deadline if kill_at is None else min(kill_at, deadline)
            if kill_at is not None and now >= kill_at and proc.poll() is None:
                self._hard_stop()
            if output_done and proc.poll() is not None:
                break
        self._flush_logs(output.end())
        self._bar_progress(output.progress, None)
        self._handle_events(tail.read())
        if watcher is not None:
            self._record_tensorboard(watcher, time.monotonic() + tbevents.RESCAN_SECONDS)
        return Outcome(exit_code=proc.returncode)

    def _event_watcher(self) -> tbevents.EventWatcher | None:
        """Rank 0 of a training job reads the TensorBoard files its workload writes."""
        plan = self.plan
        assert plan is not None
        if plan.rank != 0 or plan.kind != JobKind.TRAINING:
            return None
        return tbevents.EventWatcher([Path(plan.work_dir), Path(plan.output_dir)])

    def _record_tensorboard(self, watcher: tbevents.EventWatcher, now: float) -> None:
        plan = self.plan
        assert plan is not None
        try:
            for step, values in sorted(watcher.poll(now).items()):
                outputs.record_metrics(
                    plan.job_id, plan.attempt, step, values, fence=self._fence,
                    source="tensorboard",
                )  # fmt: skip
        except Exception:
            log.warning("could not read the TensorBoard files of job %s", plan.job_id,
                        exc_info=True)  # fmt: skip

    def _bar_progress(self, progress: tuple[int, int] | None, now: float | None) -> None:
        """Rank 0's tqdm bar, as the progress of a job that reports none through the SDK
        (every few seconds while it changes, and at the end)."""
        plan = self.plan
        assert plan is not None
        if plan.rank != 0 or progress is None or progress == self._bar_sent:
            return
        if now is not None and now - self._bar_at < BAR_PROGRESS_SECONDS:
            return
        self._bar_sent, self._bar_at = progress, now or time.monotonic()
        try:
            outputs.record_bar_progress(plan.job_id, *progress, fence=self._fence)
        except Exception:
            log.warning("could not record the progress of job %s", plan.job_id, exc_info=True)

    def _record_pids(self) -> None:
        """Tell the control plane which processes are this job's (when that changes)."""
        plan, proc = self.plan, self.proc
        assert plan is not None and proc is not None
        try:
            pids = sorted(p.pid for p in psutil.Process(proc.pid).children(recursive=True))
        except psutil.Error:
            return
        if pids != getattr(self, "_pids", None):
            self._pids = pids
            try:
                lifecycle.set_pids(plan.node_id, plan.claim, pids)
            except Exception:
                log.warning("could not record the job's pids", exc_info=True)

    def _terminate(self) -> None:
        """Ask the guard (in the sandbox, where a signal would not reach) to pass SIGTERM
        on to the workload."""
        assert self.proc is not None
        if not self._write_lifeline(b"T"):
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _hard_stop(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        with self._lifeline:
            try:
                self.proc.stdin.close()  # the lifeline: the guard SIGKILLs everything
            except OSError:
                pass
        if self.container:
            containers.remove(self.container)

    def _flush_logs(self, lines: list[bytes]) -> None:
        plan = self.plan
        assert plan is not None
        if not lines:
            return
        text = b"".join(lines).decode("utf-8", "replace")
        try:
            outputs.record_logs(plan.job_id, plan.attempt, plan.rank, text, fence=self._fence)
        except Exception:
            log.warning("could not store log output", exc_info=True)

    @property
    def _fence(self) -> lifecycle.Fence:
        assert self.plan is not None
        return (self.plan.node_id, self.plan.claim)

    def _handle_events(self, found: list[dict]) -> None:
        plan = self.plan
        assert plan is not None
        for event in found:
            try:
                if event.get("type") == "metrics":
                    kind = str(event.get("kind") or "train")
                    values = event.get("values") or {}
                    if kind != "train":
                        values = {f"{kind}/{k}": v for k, v in values.items()}
                    outputs.record_metrics(
                        plan.job_id,
                        plan.attempt,
                        int(event["step"]),
                        values,
                        event.get("total"),
                        fence=self._fence,
                    )
                elif event.get("type") == "model":
                    outputs.record_model(
                        plan.job_id,
                        str(event["path"]),
                        event.get("metrics") or {},
                        fence=self._fence,
                    )
                elif event.get("type") == "ready" and plan.kind == JobKind.REPLICA:
                    self._ready(int(event["port"]), event.get("info") or {})
                elif event.get("type") == "error":
                    self.error = str(event.get("message") or "")[:250]
                elif event.get("type") == "checkpoint":
                    outputs.record_checkpoint(
                        plan.job_id,
                        plan.attempt_id,
                        int(event["step"]),
                        str(event["path"]),
                        event.get("metrics") or {},
                        fence=self._fence,
                    )
            except (KeyError, TypeError, ValueError):
                log.info("ignored a malformed SDK event: %r", event)

    def _ready(self, port: int, info: dict) -> None:
        """The replica listens on ``port`` of this host: its endpoint. The address is this
        host's own, never one the workload names."""
        plan = self.plan
        assert plan is not None
        if not 0 < port < 65536:
            raise ValueError(f"bad port {port}")
        address = host.reachable_address(settings.BROKER_URL)
        shown = f"[{address}]" if ":" in address else address
        keep = {k: v for k, v in info.items() if isinstance(v, int | float | str)}
        lifecycle.record_ready(plan.node_id, plan.claim, f"http://{shown}:{port}", keep)
