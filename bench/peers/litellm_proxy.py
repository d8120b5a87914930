"""LiteLLM proxy peer: LiteLLM's OpenAI proxy in front of one replica, for the gateway bench.

Run from its own venv (var/bench-venvs/litellm, ``pip install 'litellm[proxy]'``):
var/bench-venvs/litellm/bin/python bench/peers/litellm_proxy.py --name NAME
--api-base http://127.0.0.1:PORT/v1 --api-key SERVICE_KEY --port P [--master-key K].

Writes a config (model ``NAME`` -> ``openai/NAME`` at ``--api-base`` with ``--api-key``;
no database, no callbacks, the master key as the callers' bearer token, like ours), then
runs what ``litellm --config CONFIG --host 127.0.0.1 --port P --num_workers 1`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path


def config(name: str, api_base: str, api_key: str, master_key: str) -> dict:
    return {
        "model_list": [
            {
                "model_name": name,
                "litellm_params": {
                    "model": f"openai/{name}",
                    "api_base": api_base,
                    "api_key": api_key,
                },
            }
        ],
        "litellm_settings": {"drop_params": True, "set_verbose": False},
        "general_settings": {"master_key": master_key},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True, help="the model name clients send")
    p.add_argument("--api-base", required=True, help="the replica's endpoint + /v1")
    p.add_argument("--api-key", required=True, help="the replica's service key")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--master-key", default="sk-bench")
    p.add_argument("--config-out", help="where to write the config (default: a temp file)")
    args = p.parse_args()
    out = Path(args.config_out or tempfile.mkstemp(prefix="litellm-", suffix=".yaml")[1])
    # JSON is YAML: LiteLLM reads it with yaml.safe_load.
    out.write_text(json.dumps(config(args.name, args.api_base, args.api_key, args.master_key)))
    # No network here: the bundled cost map, and no telemetry.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    os.environ.setdefault("LITELLM_TELEMETRY", "False")
    from litellm.proxy.proxy_cli import run_server  # what the `litellm` command runs

    argv = ["--config", str(out), "--host", "127.0.0.1", "--port", str(args.port)]
    run_server.main(args=[*argv, "--num_workers", "1"], prog_name="litellm")


if __name__ == "__main__":
    main()
