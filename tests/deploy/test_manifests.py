"""The production deployment in deploy/: Compose files that `docker-compose config`
accepts, Kubernetes manifests that pass strict schema validation, probes wired to the
real endpoints, and the settings they give passing Django's deploy check.

No container runtime starts here (the machine has no Docker daemon): what is tested is
what an operator's `docker compose up` / `kubectl apply -k` would be handed.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.plugin import ORIGINAL_ENV

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(
    COMPOSE is None, reason="docker-compose is missing (apt-get install docker-compose)"
)


def operator_env() -> dict[str, str]:
    """What an operator puts in deploy/.env (env.example's keys, real-looking values)."""
    keys = re.findall(r"^#?\s*([A-Z_]+)=", (DEPLOY / "env.example").read_text(), re.M)
    values = {key: f"value-of-{key.lower()}" for key in keys}
    values.update(
        POSTGRES_PASSWORD=secrets.token_urlsafe(16),
        REDIS_PASSWORD=secrets.token_urlsafe(16),
        CP_SECRET_KEY=secrets.token_urlsafe(48),
        CP_SECRETS_KEY=secrets.token_urlsafe(32),
        CP_ALLOWED_HOSTS="cp.example.com",
        CP_CSRF_TRUSTED_ORIGINS="https://cp.example.com",
        CP_HOSTNAME="gpu-07",
        CP_WORKER_ADDRESS="10.0.0.17",
        CP_DB_HOST="10.0.0.2",
        CP_REDIS_HOST="10.0.0.2",
        CP_NFS_SERVER="10.0.0.3",
        CP_WEB_WORKERS="4",
    )
    values.pop("CP_IMAGE", None)
    return values


def compose_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [COMPOSE, "-f", str(path), "config"],
        env={"PATH": ORIGINAL_ENV.get("PATH", ""), **env}, capture_output=True, text=True,
        timeout=60, cwd=DEPLOY,
    )  # fmt: skip


def manifests() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind: str, name: str) -> dict:
    return next(d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name)


@needs_compose
def test_the_compose_files_resolve_with_an_operators_env_file():
    config = compose_config(DEPLOY / "compose.yaml", operator_env())
    assert config.returncode == 0, config.stderr
    services = yaml.safe_load(config.stdout)["services"]
    assert {"postgres", "redis", "migrate", "web", "beat", "worker"} <= set(services)
    web, worker = services["web"], services["worker"]
    assert web["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "/healthz" in " ".join(web["healthcheck"]["test"])
    assert web["environment"]["DATABASE_URL"].startswith("postgres://cp:")
    assert worker["environment"]["CP_HOSTNAME"] == "gpu-07"
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert "seccomp=unconfined" in worker["security_opt"]
    extra = compose_config(DEPLOY / "compose.worker.yaml", operator_env())
    assert extra.returncode == 0, extra.stderr
    worker = yaml.safe_load(extra.stdout)["services"]["worker"]
    assert worker["network_mode"] == "host"
    assert worker["environment"]["CP_WORKER_ADDRESS"] == "10.0.0.17"


@needs_compose
def test_a_missing_secret_stops_compose_with_the_variable_named():
    env = operator_env()
    del env["CP_SECRETS_KEY"]
    config = compose_config(DEPLOY / "compose.yaml", env)
    assert config.returncode != 0
    assert "CP_SECRETS_KEY" in config.stderr


def test_the_kubernetes_manifests_pass_strict_schema_validation(tmp_path):
    import kubernetes_validate

    docs = manifests()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Deployment", "controlplane-web"), ("Deployment", "controlplane-beat"),
            ("DaemonSet", "controlplane-worker"), ("Job", "controlplane-migrate"),
            ("PersistentVolumeClaim", "controlplane-storage")} <= kinds  # fmt: skip
    for doc in docs:
        kubernetes_validate.validate(doc, "1.33.0", strict=True)
    # The validator is strict: a misspelt field is refused (so the loop above can fail).
    web = by_kind("Deployment", "controlplane-web")
    web["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(web, "1.33.0", strict=True)
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(listed) == on_disk


def test_the_probes_and_roles_are_wired_as_documented():
    web = by_kind("Deployment", "controlplane-web")["spec"]["template"]["spec"]
    container = web["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    beat = by_kind("Deployment", "controlplane-beat")["spec"]
    assert beat["replicas"] == 1 and beat["strategy"]["type"] == "Recreate"
    worker = by_kind("DaemonSet", "controlplane-worker")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" in worker["containers"][0]["resources"]["limits"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
           for e in worker["containers"][0]["env"] if "valueFrom" in e}  # fmt: skip
    assert env == {"CP_HOSTNAME": "spec.nodeName", "CP_WORKER_ADDRESS": "status.hostIP"}
    claim = by_kind("PersistentVolumeClaim", "controlplane-storage")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_every_setting_the_deployment_sets_is_one_the_control_plane_reads():
    text = "".join(p.read_text() for p in [*DEPLOY.glob("compose*.yaml"), *K8S.glob("*.yaml")])
    setting = r"(CP_[A-Z_]+|DATABASE_URL|REDIS_URL)"
    # environment keys (compose, ConfigMap, Secret) and env entries (`name: CP_X`); the
    # ${...} names inside values are the operator's own variables, not settings
    named = set(re.findall(rf"^\s*{setting}:", text, re.M))
    named |= set(re.findall(rf"\bname: {setting}\b", text))
    table = (ROOT / "README.md").read_text()
    unknown = sorted(n for n in named if f"| `{n}` |" not in table)
    assert len(named) >= 10 and unknown == [], f"not settings the control plane reads: {unknown}"


def test_the_manifests_settings_pass_djangos_deploy_check(tmp_path):
    config = by_kind("ConfigMap", "controlplane-config")["data"]
    secret = by_kind("Secret", "controlplane-secrets")["stringData"]
    env = {**ORIGINAL_ENV, **config, **secret, "CP_VAR_DIR": str(tmp_path),
           "CP_STORAGE_DIR": str(tmp_path / "storage"),
           "CP_SECRET_KEY": secrets.token_urlsafe(48),
           "CP_SECRETS_KEY": secrets.token_urlsafe(32)}  # fmt: skip
    for key in ("DJANGO_SETTINGS_MODULE", "CP_SANDBOX"):
        env.pop(key, None)
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    # HSTS preload is a commitment to the browsers' list an operator opts into
    # (CP_HSTS_PRELOAD); it is the one warning the manifests leave.
    warnings = set(re.findall(r"\((security\.W\d+)\)", out))
    assert warnings <= {"security.W021"}, out
