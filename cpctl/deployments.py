"""``cpctl`` commands for serving deployments.

cpctl deploy chat --model tiny --replicas 2 --set quantization=int8
cpctl deploy chat --model tiny --min 0 --max 4          # autoscaled, scale to zero
cpctl deploy chat --model tiny --replicas 2 --set prefix_affinity=true
cpctl deployments
cpctl deployment chat                                    # state, replicas, events
cpctl scale chat 3           |  cpctl scale chat --min 1 --max 4
cpctl rollout chat --version 2 --set max_batch_size=8
cpctl canary chat --percent 10 --version 3  |  cpctl promote chat  |  cpctl rollback chat
cpctl undeploy chat
cpctl generate chat "Once upon a time" --max-tokens 32   # streams through the gateway
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import httpx

from cpctl.client import ApiError, Client, load_settings

ROOT = "/api/v1/deployments/"


def _client(args: argparse.Namespace) -> Client:
    return Client(load_settings(args.url, args.token))


def _value(text: str) -> Any:
    """``8`` -> 8, ``0.5`` -> 0.5, ``null`` -> None, anything else a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _flags(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ApiError(f"--set takes key=value (got {pair!r}).")
        out[key.strip()] = _value(value.strip())
    return out


def _find(client: Client, name: str, project: str | None) -> dict:
    found = client.get(ROOT, name=name, project__name=project)["results"]
    if not found:
        raise ApiError(f"No deployment named {name!r}" + (f" in {project}." if project else "."))
    if len(found) > 1:
        projects = ", ".join(d["project"] for d in found)
        raise ApiError(f"{name!r} is a deployment of projects {projects}: add --project.")
    return found[0]


def _summary(dep: dict) -> str:
    ready = sum(1 for r in dep["replica_set"] if r["state"] == "READY")
    scale = (
        str(dep["replicas"])
        if dep["min_replicas"] == dep["max_replicas"]
        else f"{dep['replicas']} ({dep['min_replicas']}-{dep['max_replicas']})"
    )
    canary = dep.get("canary")
    extra = f", canary r{canary['number']} {canary['percent']}%" if canary else ""
    return (
        f"{dep['name']} ({dep['project']}): {dep['state']}, {ready} ready of {scale}, "
        f"{dep['model']} v{dep['version']} revision {dep['revision']['number']}{extra}. "
        f"{dep['reason']}"
    )


def cmd_deploy(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "model": args.model, **_flags(args.set)}
    for key, value in (
        ("project", args.project),
        ("version", args.version),
        ("replicas", args.replicas),
        ("min_replicas", args.min),
        ("max_replicas", args.max),
        ("cpus_per_replica", args.cpus),
        ("gpus_per_replica", args.gpus),
        ("priority", args.priority),
    ):
        if value is not None:
            body[key] = value
    dep = _client(args).post(ROOT, json=body)
    print(_summary(dep))
    print(f"Clients send model={dep['name']!r} to {load_settings(args.url, args.token).url}/v1/")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from cpctl.cli import _table

    rows = []
    for dep in _client(args).get(ROOT, project__name=args.project, page_size=200)["results"]:
        ready = sum(1 for r in dep["replica_set"] if r["state"] == "READY")
        stats = dep.get("stats") or {}
        rows.append(
            [
                dep["name"],
                dep["project"],
                dep["state"],
                f"{ready}/{dep['replicas']}",
                f"{dep['model']} v{dep['version']}",
                dep["config"].get("quantization", ""),
                f"{stats.get('requests_per_second', 0):.1f}",
                f"{stats.get('tokens_per_second', 0):.0f}",
            ]
        )
    print(_table(rows, ["NAME", "PROJECT", "STATE", "READY", "MODEL", "QUANT", "REQ/S", "TOK/S"]))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from cpctl.cli import _table

    client = _client(args)
    dep = _find(client, args.name, args.project)
    print(_summary(dep))
    rows = [
        [f"r{r['number']}", r["state"], r["revision"], r["worker_name"], r["endpoint"],
         f"{r['cold_start_seconds']:.1f}" if r["cold_start_seconds"] else ""]
        for r in dep["replica_set"]
    ]  # fmt: skip
    print(_table(rows, ["REPLICA", "STATE", "REVISION", "HOST", "ENDPOINT", "COLD START S"]))
    page = client.get(f"{ROOT}{dep['id']}/events/", page_size=args.events)
    for event in reversed(page["results"]):
        print(f"{event['created_at'][:19]}  {event['level']:7}  {event['message']}")
    return 0


def _patch(args: argparse.Namespace, body: dict[str, Any]) -> int:
    client = _client(args)
    dep = _find(client, args.name, args.project)
    dep = client.request("PATCH", f"{ROOT}{dep['id']}/", json=body)
    print(_summary(dep))
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    if args.replicas is not None:
        return _patch(args, {"replicas": args.replicas})
    body = {
        k: v for k, v in (("min_replicas", args.min), ("max_replicas", args.max)) if v is not None
    }
    if not body:
        raise ApiError("Give a replica count, or --min/--max.")
    return _patch(args, body)


def cmd_rollout(args: argparse.Namespace) -> int:
    body = _flags(args.set)
    if args.version is not None:
        body["version"] = args.version
    if not body:
        raise ApiError("Give --version N and/or --set flag=value.")
    return _patch(args, body)


def cmd_canary(args: argparse.Namespace) -> int:
    canary: dict[str, Any] = {
        "percent": args.percent,
        "replicas": args.replicas,
        **_flags(args.set),
    }
    if args.version is not None:
        canary["version"] = args.version
    return _patch(args, {"canary": canary})


def _action(args: argparse.Namespace, verb: str) -> int:
    client = _client(args)
    dep = _find(client, args.name, args.project)
    print(_summary(client.post(f"{ROOT}{dep['id']}/{verb}/")))
    return 0


def cmd_undeploy(args: argparse.Namespace) -> int:
    client = _client(args)
    dep = _find(client, args.name, args.project)
    dep = client.request("DELETE", f"{ROOT}{dep['id']}/")
    print(f"{dep['name']}: {dep['state']} ({dep['reason']})")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Stream a completion through the gateway, as any OpenAI client would."""
    settings = load_settings(args.url, args.token)
    client = Client(settings, timeout=600)
    model = f"{args.project}/{args.name}" if args.project else args.name
    body = {"model": model, "prompt": args.prompt, "max_tokens": args.max_tokens, "stream": True}
    if args.temperature is not None:
        body["temperature"] = args.temperature
    try:
        with client.http.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code >= 400:
                response.read()
                error = response.json().get("error", {}) if response.content else {}
                raise ApiError(
                    f"HTTP {response.status_code}: {error.get('message', response.text)}"
                )
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise ApiError(chunk["error"].get("message", "the stream failed"))
                sys.stdout.write(chunk["choices"][0].get("text", ""))
                sys.stdout.flush()
    except httpx.HTTPError as exc:
        raise ApiError(f"Cannot reach {settings.url}: {exc}") from None
    sys.stdout.write("\n")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    def command(name: str, run, help: str, **kwargs: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, **kwargs)
        p.add_argument("--project", help="the deployment's project (when the name is ambiguous)")
        p.set_defaults(run=run)
        return p

    deploy = command("deploy", cmd_deploy, "serve a registered model behind the gateway")
    deploy.add_argument("name")
    deploy.add_argument("--model", required=True, help="a registered model's name")
    deploy.add_argument("--version", type=int, help="default: the latest")
    deploy.add_argument("--replicas", type=int)
    deploy.add_argument("--min", type=int, help="autoscale from (0: scale to zero)")
    deploy.add_argument("--max", type=int, help="autoscale up to")
    deploy.add_argument("--cpus", type=int, help="CPU slots per replica")
    deploy.add_argument("--gpus", type=int, help="GPUs per replica")
    deploy.add_argument("--priority", choices=["low", "normal", "high"])
    deploy.add_argument("--set", action="append", metavar="FLAG=VALUE", help="an engine flag")
    command("deployments", cmd_list, "list deployments")
    show = command("deployment", cmd_show, "a deployment's replicas and events")
    show.add_argument("name")
    show.add_argument("--events", type=int, default=20)
    scale = command("scale", cmd_scale, "set a deployment's replicas")
    scale.add_argument("name")
    scale.add_argument("replicas", type=int, nargs="?")
    scale.add_argument("--min", type=int)
    scale.add_argument("--max", type=int)
    rollout = command("rollout", cmd_rollout, "roll out a new version or engine flags")
    rollout.add_argument("name")
    rollout.add_argument("--version", type=int)
    rollout.add_argument("--set", action="append", metavar="FLAG=VALUE")
    canary = command("canary", cmd_canary, "send a share of requests to a new revision")
    canary.add_argument("name")
    canary.add_argument("--percent", type=int, required=True)
    canary.add_argument("--replicas", type=int, default=1)
    canary.add_argument("--version", type=int)
    canary.add_argument("--set", action="append", metavar="FLAG=VALUE")
    for verb, what in (("promote", "make the canary the deployment's revision"),
                       ("rollback", "stop the canary")):  # fmt: skip
        command(verb, lambda a, v=verb: _action(a, v), what).add_argument("name")
    command("undeploy", cmd_undeploy, "drain and delete a deployment").add_argument("name")
    generate = command("generate", cmd_generate, "stream a completion through the gateway")
    generate.add_argument("name")
    generate.add_argument("prompt")
    generate.add_argument("--max-tokens", type=int, default=64)
    generate.add_argument("--temperature", type=float)
