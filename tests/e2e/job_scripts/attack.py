"""What an attacker's job tries (issue 10): each probe prints one JSON line; 'blocked' is
the only good answer. Arguments: the stack's var directory, its storage directory, a file
of another project there, the Redis port, the web port, the control plane's checkout."""

import json
import os
import socket
import sqlite3
import sys

var_dir, storage, foreign, redis_port, web_port, checkout = sys.argv[1:7]
SECRET_NAMES = ("DATABASE_URL", "REDIS_URL", "CP_SECRET_KEY", "CP_ADMIN_PASSWORD", "SECRET_KEY")


def probe(name, action):
    try:
        result = action()
    except Exception as exc:  # every failure is the point
        print(json.dumps({"probe": name, "outcome": "blocked", "how": type(exc).__name__}))
        return
    outcome = "blocked" if result is None else f"LEAK: {str(result)[:200]}"
    print(json.dumps({"probe": name, "outcome": outcome}), flush=True)


def read(path):
    with open(path, "rb") as handle:
        return handle.read(100)


def database():
    path = os.path.join(var_dir, "db.sqlite3")
    read(path)  # raises when it is not there
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    return conn.execute("select username, password from auth_user").fetchall()


def environs():
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                text = handle.read()
        except OSError:
            continue
        found += [f"{pid}:{n}" for n in SECRET_NAMES if f"{n}=".encode() in text]
    return found or None


def connect(port):
    with socket.create_connection(("127.0.0.1", int(port)), timeout=2) as sock:
        return f"connected to {sock.getpeername()}"


def write(path):
    with open(path, "w") as handle:
        handle.write("owned")
    return f"wrote {path}"


def listing(path):
    """Other jobs' directories (its own job's is where its directories are bound)."""
    return [e for e in os.listdir(path) if e != os.environ["CP_JOB_ID"]] or None


probe("secret_key", lambda: read(os.path.join(var_dir, "secret_key")))
probe("redis_password", lambda: read(os.path.join(var_dir, "redis_password")))
probe("database", database)
probe("proc_environ", environs)
probe("other_project_file", lambda: read(foreign))
probe("storage_listing", lambda: listing(os.path.join(storage, "jobs")))
probe("redis_port", lambda: connect(redis_port))
probe("web_port", lambda: connect(web_port))
probe("checkout_settings", lambda: read(os.path.join(checkout, "controlplane", "settings.py")))
probe("write_checkout", lambda: write(os.path.join(checkout, "owned.txt")))
probe("write_var", lambda: write(os.path.join(var_dir, "owned.txt")))
probe("write_etc", lambda: write("/etc/owned.txt"))
probe("root_uid", lambda: "running as root" if os.getuid() == 0 else None)
pids = [p for p in os.listdir("/proc") if p.isdigit()]
print(json.dumps({"probe": "done", "uid": os.getuid(), "pids": len(pids)}))
