"""``python -m serving.gateway [--host H] [--port P] [--workers N]``: the gateway alone,
for production (run several behind any load balancer). It reads the same settings as
the control plane (``DATABASE_URL``, ``REDIS_URL``, ``CP_SECRET_KEY``...) and serves
``/v1/*``, ``/health`` and ``/metrics``."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.gateway", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=1, help="processes (uvicorn workers)")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    import django

    django.setup()
    import uvicorn

    uvicorn.run(
        "serving.gateway.standalone:application",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=False,
        lifespan="off",
        timeout_keep_alive=30,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
