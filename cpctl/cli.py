"""``cpctl``: login, submit, jobs, logs -f, cancel, workers.

cpctl login --url http://127.0.0.1:8000 --token cp_...
cpctl submit job.yaml --dir . --follow
cpctl jobs --state RUNNING
cpctl logs -f 42
cpctl cancel 42
cpctl outputs 42 [--get results.json | --all] [-o FILE]
cpctl workers
cpctl sweep submit sweep.yaml --dir . --watch; cpctl sweep show 7 --sort metric  (sweeps.py)
cpctl deploy chat --model tiny --replicas 2; cpctl generate chat "Hello"  (see deployments.py)
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from cpctl import deployments, sweeps
from cpctl.client import ApiError, Client, load_settings, pack_directory, save_settings

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


def _table(rows: list[list[Any]], headers: list[str]) -> str:
    cells = [headers, *[[("" if c is None else str(c)) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells
    )


def cmd_login(args: argparse.Namespace) -> int:
    settings = load_settings(args.url, args.token)
    if not args.token:
        settings.token = getpass.getpass(f"API token for {settings.url}: ").strip()
    projects = Client(settings).get("/api/v1/projects/")
    path = save_settings(settings)
    names = ", ".join(p["name"] for p in projects["results"]) or "none yet"
    print(f"Logged in to {settings.url} (projects: {names}); saved to {path}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    client = Client(load_settings(args.url, args.token))
    spec_path = Path(args.spec)
    try:
        text = spec_path.read_text()
    except OSError as exc:
        raise ApiError(f"Cannot read {spec_path}: {exc.strerror}") from None
    try:
        yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ApiError(f"{spec_path} is not valid YAML: {exc}") from None
    if args.dir:
        directory = Path(args.dir)
        if not directory.is_dir():
            raise ApiError(f"{directory} is not a directory.")
        archive = pack_directory(directory)
        job = client.post(
            "/api/v1/jobs/",
            data={"spec": text},
            files={"code": ("code.tar.gz", archive, "application/gzip")},
        )
    else:
        job = client.post("/api/v1/jobs/", json=yaml.safe_load(text))
    print(f"Submitted job {job['id']} ({job['name']}): {job['state']}")
    print(f"  {client.settings.url}/jobs/{job['id']}/")
    if args.follow:
        return follow(client, job["id"])
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    client = Client(load_settings(args.url, args.token))
    page = client.get("/api/v1/jobs/", state=args.state, project=args.project, page_size=args.limit)
    rows = []
    for job in page["results"]:
        progress = job.get("progress") or {}
        step = progress.get("step")
        where = (
            ""
            if step is None
            else f"step {step}" + (f"/{progress['total']}" if progress.get("total") else "")
        )
        res = job["resources"]
        size = (
            f"{res['nodes']}x{res['gpus_per_node']}gpu"
            if res["gpus_per_node"]
            else f"{res['nodes']}x{res['procs_per_node']}cpu"
        )
        rows.append(
            [job["id"], job["name"], job["project"], job["state"], size, where, job["reason"][:60]]
        )
    print(_table(rows, ["ID", "NAME", "PROJECT", "STATE", "SIZE", "PROGRESS", "REASON"]))
    return 0


def _progress_line(job: dict) -> str:
    progress = job.get("progress") or {}
    if progress.get("step") is None:
        return f"[{job['state'].lower()}]"
    total = f" / {progress['total']}" if progress.get("total") else ""
    metrics = progress.get("metrics") or {}
    loss = metrics.get("loss", metrics.get("train/loss"))
    loss_text = f"  loss {loss:.4f}" if isinstance(loss, int | float) else ""
    return f"[{job['state'].lower()}] step {progress['step']}{total}{loss_text}"


def follow(client: Client, job_id: int, interval: float = 1.0) -> int:
    """Print the job's output as it comes, with a progress line on stderr, until it ends."""
    since = 0
    tty = sys.stderr.isatty()
    while True:
        page = client.get(f"/api/v1/jobs/{job_id}/logs/", since=since, limit=500)
        if page["chunks"] and tty:
            sys.stderr.write("\r\033[K")
        for chunk in page["chunks"]:
            sys.stdout.write(chunk["text"])
        sys.stdout.flush()
        since = page["next"]
        if page["finished"] and not page["chunks"]:
            job = client.get(f"/api/v1/jobs/{job_id}/")
            if tty:
                sys.stderr.write("\r\033[K")
            print(
                f"Job {job_id} {job['state']}" + (f": {job['reason']}" if job["reason"] else ""),
                file=sys.stderr,
            )
            return 0 if job["state"] == "SUCCEEDED" else 1
        if not page["chunks"]:
            job = client.get(f"/api/v1/jobs/{job_id}/")
            line = _progress_line(job)
            sys.stderr.write(f"\r\033[K{line}" if tty else f"{line}\n")
            sys.stderr.flush()
            time.sleep(interval)


def cmd_logs(args: argparse.Namespace) -> int:
    client = Client(load_settings(args.url, args.token))
    if args.follow:
        return follow(client, args.job)
    since = 0
    while True:
        page = client.get(f"/api/v1/jobs/{args.job}/logs/", since=since, limit=500)
        for chunk in page["chunks"]:
            sys.stdout.write(chunk["text"])
        if not page["chunks"]:
            return 0
        since = page["next"]


def cmd_outputs(args: argparse.Namespace) -> int:
    """List a job's outputs, or download one (``--get PATH``) or all (``--all``, .tar.gz)."""
    client = Client(load_settings(args.url, args.token))
    base = f"/api/v1/jobs/{args.job}/outputs/"
    if args.get or args.all:
        default = args.get.rsplit("/", 1)[-1] if args.get else f"job{args.job}-outputs.tar.gz"
        target = Path(args.output or default)
        if args.get:
            size = client.download(base + "file/", target, path=args.get)
        else:
            size = client.download(base + "archive/", target)
        print(f"Wrote {target} ({size} bytes)")
        return 0
    listed = client.get(base)
    rows = [[f["path"], f["size"], f["modified"][:19]] for f in listed["files"]]
    print(_table(rows, ["PATH", "BYTES", "MODIFIED"]))
    more = " (the list is cut: --all has them all)" if listed["truncated"] else ""
    print(f"{listed['count']} file(s), {listed['total_bytes']} bytes{more}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    client = Client(load_settings(args.url, args.token))
    job = client.post(f"/api/v1/jobs/{args.job}/cancel/")
    print(f"Job {job['id']}: {job['state']} ({job['reason']})")
    return 0


def _environment_text(env: dict) -> str:
    if env.get("kind") == "venv":
        cached = " cached" if env.get("cached") else ""
        return f"venv {env['key']}{cached}: {', '.join(env.get('packages') or []) or '-'}"
    if env.get("kind") == "image":
        return f"image {env.get('image')} ({env.get('runtime', '')})"
    if env.get("kind"):
        return f"worker's Python {env.get('python', '')}"
    return ""


def cmd_attempts(args: argparse.Namespace) -> int:
    client = Client(load_settings(args.url, args.token))
    rows = []
    for attempt in client.get(f"/api/v1/jobs/{args.job}/attempts/"):
        env = attempt.get("environment") or {}
        hosts = ",".join(n["worker"] for n in attempt.get("nodes", []))
        sandbox = env.get("sandbox", "")
        rows.append(
            [attempt["number"], attempt["state"], hosts, sandbox, _environment_text(env)[:90]]
        )
    print(_table(rows, ["#", "STATE", "HOSTS", "SANDBOX", "ENVIRONMENT"]))
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    client = Client(load_settings(args.url, args.token))
    rows = []
    for worker in client.get("/api/v1/workers/", page_size=1000)["results"]:
        gpus = worker["gpus"]
        busy = sum(1 for g in gpus if g.get("in_use_by"))
        gpu_text = f"{busy}/{len(gpus)} busy ({gpus[0]['name']})" if gpus else "none"
        slots = f"{len(worker.get('cpu_slots_in_use', []))}/{worker['cpu_slots']}"
        rows.append(
            [
                worker["name"],
                worker["status"],
                worker["address"],
                gpu_text,
                slots,
                worker.get("sandbox", "")[:40],
                worker.get("container_runtime", "") or "-",
            ]
        )
    print(_table(rows, ["HOST", "STATUS", "ADDRESS", "GPUS", "CPU SLOTS", "SANDBOX", "CONTAINERS"]))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="cpctl", description="GPU control plane client.")
    top.add_argument("--url", help="server (default: CP_URL or the saved login)")
    top.add_argument("--token", help="API token (default: CP_TOKEN or the saved login)")
    sub = top.add_subparsers(dest="command", required=True)
    sub.add_parser("login", help="save the server and token").set_defaults(run=cmd_login)
    submit = sub.add_parser("submit", help="submit a job spec (YAML)")
    submit.add_argument("spec")
    submit.add_argument("--dir", help="upload this working directory with the job")
    submit.add_argument("-f", "--follow", action="store_true", help="then follow its logs")
    submit.set_defaults(run=cmd_submit)
    jobs = sub.add_parser("jobs", help="list jobs")
    jobs.add_argument("--state")
    jobs.add_argument("--project")
    jobs.add_argument("--limit", type=int, default=50)
    jobs.set_defaults(run=cmd_jobs)
    logs = sub.add_parser("logs", help="print a job's output")
    logs.add_argument("job", type=int)
    logs.add_argument("-f", "--follow", action="store_true")
    logs.set_defaults(run=cmd_logs)
    attempts = sub.add_parser("attempts", help="a job's attempts and what each ran in")
    attempts.add_argument("job", type=int)
    attempts.set_defaults(run=cmd_attempts)
    outs = sub.add_parser("outputs", help="list or download a job's outputs")
    outs.add_argument("job", type=int)
    which = outs.add_mutually_exclusive_group()
    which.add_argument("--get", metavar="PATH", help="download this file")
    which.add_argument("--all", action="store_true", help="download them all as a .tar.gz")
    outs.add_argument("-o", "--output", help="where to write it (default: its name)")
    outs.set_defaults(run=cmd_outputs)
    cancel = sub.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job", type=int)
    cancel.set_defaults(run=cmd_cancel)
    sub.add_parser("workers", help="list worker hosts and their GPUs").set_defaults(run=cmd_workers)
    deployments.add_commands(sub)
    sweeps.add_commands(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except ApiError as exc:
        print(f"cpctl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
