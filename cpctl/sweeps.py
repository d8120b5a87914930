"""``cpctl sweep``: hyperparameter sweeps.

cpctl sweep submit sweep.yaml [--dir .] [--watch]
cpctl sweep list
cpctl sweep show 7 [--sort metric]         # trials, best first with --sort metric
cpctl sweep cancel 7
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml

from cpctl.client import ApiError, Client, load_settings, pack_directory

ROOT = "/api/v1/sweeps/"
ENDED = {"SUCCEEDED", "FAILED", "CANCELLED"}


def _client(args: argparse.Namespace) -> Client:
    return Client(load_settings(args.url, args.token))


def _table(rows: list[list[Any]], headers: list[str]) -> str:
    from cpctl.cli import _table as table

    return table(rows, headers)


def _number(value: Any) -> str:
    return "" if value is None else f"{value:.6g}"


def _summary(sweep: dict) -> str:
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sweep["counts"].items() if n)
    best = sweep.get("best")
    line = (f"Sweep {sweep['id']} {sweep['name']} ({sweep['project']}): {sweep['state']}, "
            f"{sweep['total']} trial(s): {counts or 'none yet'}.")  # fmt: skip
    if best:
        hparams = json.dumps(best["hparams"], separators=(", ", "="))[1:-1].replace('"', "")
        line += (f"\n  best: trial {best['number']} (job {best['job']}) "
                 f"{sweep['metric']} {_number(best['metric'])} with {hparams}")  # fmt: skip
    if sweep.get("reason"):
        line += f"\n  {sweep['reason']}"
    return line


def cmd_submit(args: argparse.Namespace) -> int:
    client = _client(args)
    path = Path(args.file)
    try:
        text = path.read_text()
        data = yaml.safe_load(text)
    except OSError as exc:
        raise ApiError(f"Cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ApiError(f"{path} is not valid YAML: {exc}") from None
    if args.dir:
        directory = Path(args.dir)
        if not directory.is_dir():
            raise ApiError(f"{directory} is not a directory.")
        sweep = client.post(
            ROOT, data={"sweep": text},
            files={"code": ("code.tar.gz", pack_directory(directory), "application/gzip")},
        )  # fmt: skip
    else:
        sweep = client.post(ROOT, json=data)
    print(f"Submitted sweep {sweep['id']} ({sweep['name']}): {sweep['total']} trial(s)")
    print(f"  {client.settings.url}/sweeps/{sweep['id']}/")
    if args.watch:
        return watch(client, sweep["id"])
    return 0


def watch(client: Client, sweep_id: int, every: float = 2.0) -> int:
    """Print the sweep's line whenever it changes, until it ends; 0 if it succeeded."""
    last = ""
    while True:
        sweep = client.get(f"{ROOT}{sweep_id}/")
        line = _summary(sweep)
        if line != last:
            print(line, flush=True)
            last = line
        if sweep["state"] in ENDED:
            return 0 if sweep["state"] == "SUCCEEDED" else 1
        time.sleep(every)


def cmd_list(args: argparse.Namespace) -> int:
    found = _client(args).get(ROOT, project=args.project, page_size=args.limit)["results"]
    rows = [
        [s["id"], s["name"], s["project"], s["state"], s["total"],
         sum(n for st, n in s["counts"].items() if st != "LIVE"), s["metric"],
         _number((s.get("best") or {}).get("metric"))]
        for s in found
    ]  # fmt: skip
    print(_table(rows, ["ID", "NAME", "PROJECT", "STATE", "TRIALS", "ENDED", "METRIC", "BEST"]))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    client = _client(args)
    sweep = client.get(f"{ROOT}{args.sweep}/")
    print(_summary(sweep))
    ordering = {"metric": "metric" if sweep["goal"] == "minimize" else "-metric"}.get(
        args.sort, "number"
    )
    trials = client.get(f"{ROOT}{args.sweep}/trials/", ordering=ordering)
    names = list(sweep["search"]["parameters"])
    rows = [
        [t["number"], t["job"], t["state"], *[t["hparams"].get(n) for n in names],
         _number(t["metric"]), t["metric_step"], t["reason"][:60]]
        for t in trials
    ]  # fmt: skip
    print()
    print(_table(rows, ["TRIAL", "JOB", "STATE", *names, sweep["metric"], "STEP", "REASON"]))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    sweep = _client(args).post(f"{ROOT}{args.sweep}/cancel/")
    print(_summary(sweep))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    sweep = sub.add_parser("sweep", help="hyperparameter sweeps: submit, list, show, cancel")
    verbs = sweep.add_subparsers(dest="verb", required=True)
    submit = verbs.add_parser("submit", help="submit a sweep file (YAML)")
    submit.add_argument("file")
    submit.add_argument("--dir", help="upload this working directory for every trial")
    submit.add_argument("-w", "--watch", action="store_true", help="then follow it to its end")
    submit.set_defaults(run=cmd_submit)
    listing = verbs.add_parser("list", help="list sweeps")
    listing.add_argument("--project")
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(run=cmd_list)
    show = verbs.add_parser("show", help="a sweep and its trials")
    show.add_argument("sweep", type=int)
    show.add_argument("--sort", choices=["number", "metric"], default="number")
    show.set_defaults(run=cmd_show)
    cancel = verbs.add_parser("cancel", help="cancel a sweep (its live trials too)")
    cancel.add_argument("sweep", type=int)
    cancel.set_defaults(run=cmd_cancel)
