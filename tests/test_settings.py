"""Settings come from the environment; a bad value stops start-up naming the variable."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from controlplane import env
from tests.plugin import ORIGINAL_ENV

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def setenv(monkeypatch):
    return monkeypatch.setenv


def test_helpers_parse_good_values(setenv):
    setenv("X_BOOL", "Yes")
    setenv("X_INT", " 42 ")
    setenv("X_FLOAT", "0.5")
    setenv("X_LIST", "a, b,,c")
    setenv("X_CHOICE", "PRODUCTION")
    assert env.env_bool("X_BOOL") is True
    assert env.env_int("X_INT", 0, minimum=1) == 42
    assert env.env_float("X_FLOAT", 1.0, minimum=0.1) == 0.5
    assert env.env_list("X_LIST", []) == ["a", "b", "c"]
    assert env.env_choice("X_CHOICE", "development", ("development", "production")) == "production"
    assert env.env_int("X_UNSET", 7) == 7


@pytest.mark.parametrize(
    ("reader", "value", "words"),
    [
        (lambda: env.env_bool("X_BAD"), "maybe", "not a boolean"),
        (lambda: env.env_int("X_BAD", 1), "4.5", "not a whole number"),
        (lambda: env.env_int("X_BAD", 1, minimum=1), "0", "below the minimum"),
        (lambda: env.env_int("X_BAD", 1, maximum=9), "10", "above the maximum"),
        (lambda: env.env_float("X_BAD", 1.0), "nan", "not a number"),
        (lambda: env.env_choice("X_BAD", "a", ("a", "b")), "c", "must be one of: a, b"),
        (lambda: env.env_url("X_BAD", "redis://x", ("redis",)), "http://x", "scheme"),
    ],
)
def test_helpers_name_the_variable_and_what_it_expects(setenv, reader, value, words):
    setenv("X_BAD", value)
    with pytest.raises(ImproperlyConfigured, match="X_BAD") as caught:
        reader()
    assert words in str(caught.value)


def run(args: list[str], extra: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in ORIGINAL_ENV.items() if k != "CP_SECRET_KEY"}
    environ.update({"CP_VAR_DIR": str(tmp_path), **extra})
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CP_DEBUG", "maybe"),
        ("CP_HTTP_PORT", "eighty"),
        ("CP_WORKER_OFFLINE_AFTER", "-3"),
        ("DATABASE_URL", "mysql://db/x"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("CP_THROTTLE_USER", "lots"),
        ("CP_ENV", "staging"),
    ],
)
def test_a_bad_value_stops_manage_py_with_a_message_naming_it(tmp_path, variable, value):
    result = run(["manage.py", "check"], {variable: value}, tmp_path)
    assert result.returncode != 0
    assert variable in result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_a_bad_value_stops_the_stack_before_it_starts_anything(tmp_path):
    result = run(["-m", "controlplane.stack"], {"CP_WORKER_CONCURRENCY": "0"}, tmp_path)
    assert result.returncode == 2
    assert "CP_WORKER_CONCURRENCY" in result.stderr
    assert not (tmp_path / "db.sqlite3").exists()


def test_production_settings_pass_the_deploy_check(tmp_path):
    result = run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        {
            "CP_ENV": "production",
            "CP_HSTS_PRELOAD": "true",
            "CP_ALLOWED_HOSTS": "gpu.example.com",
            "CP_CSRF_TRUSTED_ORIGINS": "https://gpu.example.com",
        },
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_development_settings_are_not_passed_off_as_production(tmp_path):
    result = run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], {}, tmp_path)
    assert result.returncode != 0
    assert "SECURE_SSL_REDIRECT" in result.stdout + result.stderr


def test_the_secret_key_is_generated_once_and_kept(tmp_path):
    code = "from django.conf import settings; print(settings.SECRET_KEY)"
    script = ["-c", f"import django, os; django.setup(); {code}"]
    extra = {"DJANGO_SETTINGS_MODULE": "controlplane.settings"}
    first = run(script, extra, tmp_path)
    second = run(script, extra, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and len(first.stdout.strip()) >= 50
    key_file = tmp_path / "secret_key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"


def test_every_variable_the_settings_read_is_in_the_readme_table():
    source = (ROOT / "controlplane" / "settings.py").read_text()
    read = set(re.findall(r'env_\w+\(\s*"([A-Z_]+)"', source)) | set(
        re.findall(r'_rate\(\s*"([A-Z_]+)"', source)
    )
    assert {"CP_ENV", "DATABASE_URL", "REDIS_URL", "CP_THROTTLE_USER"} <= read
    table = (ROOT / "README.md").read_text()
    missing = sorted(name for name in read if f"| `{name}` |" not in table)
    assert missing == [], f"add these to the README's configuration table: {missing}"


def test_the_models_and_migrations_agree(tmp_path):
    result = run(["manage.py", "makemigrations", "--check", "--dry-run"], {}, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
