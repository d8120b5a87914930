"""Settings: one module, every value from the environment (see README, "Configuration").

With nothing set this is the embedded default: SQLite and an embedded Redis under
``var/``. ``DATABASE_URL`` and ``REDIS_URL`` switch to PostgreSQL and an external Redis;
``CP_ENV=production`` turns on the secure defaults that ``manage.py check --deploy`` wants.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import socket
from datetime import timedelta
from pathlib import Path

import csp.constants as csp
import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from kombu import Exchange, Queue

from controlplane.env import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_str,
    env_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent

CP_ENV = env_choice("CP_ENV", "development", ("development", "production"))
PRODUCTION = CP_ENV == "production"

VAR_DIR = Path(env_str("CP_VAR_DIR", str(BASE_DIR / "var"))).resolve()
# The database, the secret key and Redis's password live here: the control plane's user only.
VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
try:
    VAR_DIR.chmod(0o700)
except PermissionError:  # another user's directory: leave it as its owner set it
    pass


def _generated_secret(name: str, length: int = 64) -> str:
    """A random secret kept in ``var/<name>`` (mode 0600), made once; of processes starting
    together, one value wins and every process reads that one."""
    path = VAR_DIR / name
    if not path.exists():
        tmp = VAR_DIR / f".{name}.{secrets.token_hex(8)}"
        tmp.touch(mode=0o600)
        tmp.write_text(secrets.token_urlsafe(length))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


def _secret_key() -> str:
    given = env_str("CP_SECRET_KEY")
    if given:
        if len(given) < 50 or len(set(given)) < 5:
            raise ImproperlyConfigured(
                "CP_SECRET_KEY must be at least 50 characters with at least 5 distinct ones."
            )
        return given
    return _generated_secret("secret_key")


SECRET_KEY = _secret_key()
# Encrypts project secrets (kept outside the database). Set the same on every host.
SECRETS_KEY = env_str("CP_SECRETS_KEY") or _generated_secret("secrets_key")
if len(SECRETS_KEY) < 32:
    raise ImproperlyConfigured("CP_SECRETS_KEY must be at least 32 characters.")
DEBUG = env_bool("CP_DEBUG", False)

ALLOWED_HOSTS = env_list("CP_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list(
    "CP_CSRF_TRUSTED_ORIGINS", ["http://localhost:8000", "http://127.0.0.1:8000"]
)
for _origin in CSRF_TRUSTED_ORIGINS:
    if not re.match(r"^https?://[^/]+$", _origin):
        raise ImproperlyConfigured(
            f"CP_CSRF_TRUSTED_ORIGINS: {_origin!r} must look like https://host[:port]."
        )

# --- security (production turns these on; each can be set on its own) --------------------
SECURE_SSL_REDIRECT = env_bool("CP_SECURE_SSL_REDIRECT", PRODUCTION)
SESSION_COOKIE_SECURE = env_bool("CP_SESSION_COOKIE_SECURE", PRODUCTION)
CSRF_COOKIE_SECURE = env_bool("CP_CSRF_COOKIE_SECURE", PRODUCTION)
SECURE_HSTS_SECONDS = env_int("CP_HSTS_SECONDS", 31536000 if PRODUCTION else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("CP_HSTS_INCLUDE_SUBDOMAINS", PRODUCTION)
SECURE_HSTS_PRELOAD = env_bool("CP_HSTS_PRELOAD", False)
BEHIND_PROXY = env_bool("CP_BEHIND_PROXY", False)
# The proxies whose X-Forwarded-For hops are believed (behind CP_BEHIND_PROXY): the client
# is the right-most hop that is not one of them.
try:
    TRUSTED_PROXIES = [
        ipaddress.ip_network(n, strict=False)
        for n in env_list("CP_TRUSTED_PROXIES", ["127.0.0.0/8", "::1/128"])
    ]
except ValueError as exc:
    raise ImproperlyConfigured(f"CP_TRUSTED_PROXIES: {exc} (use addresses or CIDRs)") from None
if BEHIND_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Probes and scrapers speak plain HTTP inside the cluster.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

# --- apps ----------------------------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "axes",
    "controlplane.tenancy",
    "controlplane.cluster",
    "controlplane.notifications",
    "jobs",
    "jobs.sweeps",
    "serving",
    "monitoring",
    "workers",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "controlplane.degraded.RedisUnavailableMiddleware",
    "csp.middleware.CSPMiddleware",
    # Last: it refuses a locked-out login before the view runs.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "controlplane.urls"
ASGI_APPLICATION = "controlplane.asgi.application"
WSGI_APPLICATION = "controlplane.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "controlplane" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- database ------------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
try:
    _db = dj_database_url.parse(
        DATABASE_URL, conn_max_age=env_int("CP_DB_CONN_MAX_AGE", 60, minimum=0)
    )
except (ValueError, KeyError) as exc:
    raise ImproperlyConfigured(f"DATABASE_URL={DATABASE_URL!r} is not usable: {exc}") from None
if _db["ENGINE"] not in ("django.db.backends.sqlite3", "django.db.backends.postgresql"):
    raise ImproperlyConfigured("DATABASE_URL must be a postgres:// or sqlite:/// URL.")
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # Several processes write (web, worker, beat): WAL, write locks taken at BEGIN, and a
    # generous busy timeout make SQLite behave; PostgreSQL is the production database.
    _db["CONN_MAX_AGE"] = 0
    # Tests get a file database too (not :memory:), so threads and processes share it.
    _db["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}
    _db["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
else:
    _db["CONN_HEALTH_CHECKS"] = True
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- redis, channels, cache, celery --------------------------------------------------------
EMBEDDED_REDIS_PORT = env_int("CP_EMBEDDED_REDIS_PORT", 6390, minimum=1, maximum=65535)
EMBEDDED_REDIS = env_str("REDIS_URL") == ""
# The embedded Redis requires a generated password (var/redis_password, mode 0600).
EMBEDDED_REDIS_PASSWORD = _generated_secret("redis_password", 32) if EMBEDDED_REDIS else ""
REDIS_URL = env_url(
    "REDIS_URL",
    f"redis://:{EMBEDDED_REDIS_PASSWORD}@127.0.0.1:{EMBEDDED_REDIS_PORT}/0",
    ("redis", "rediss", "unix"),
)
BROKER_URL = env_url("CP_BROKER_URL", REDIS_URL, ("redis", "rediss", "unix", "amqp", "amqps"))

CACHE_PREFIX = env_str("CP_CACHE_PREFIX", "cp")
# The channel layer waits on Redis with blocking reads of up to 5 s: its sockets must wait
# longer than that (redis-py's default of 5 s dropped every idle websocket), and a dead
# connection is found by keepalive, not by a read that never returns.
_LAYER_HOST = {
    "address": REDIS_URL,
    "socket_timeout": 30,
    "socket_connect_timeout": 5,
    "socket_keepalive": True,
    "health_check_interval": 15,
}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [_LAYER_HOST],
            "prefix": f"{CACHE_PREFIX}:ch",  # two control planes may share one Redis
            "capacity": 1000,
            "expiry": 30,
        },
    }
}
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": CACHE_PREFIX,
        "TIMEOUT": 300,
    }
}

HOSTNAME = env_str("CP_HOSTNAME", socket.gethostname())
if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", HOSTNAME):
    raise ImproperlyConfigured(
        f"CP_HOSTNAME={HOSTNAME!r}: use letters, digits, '.', '_' or '-' (at most 63)."
    )
WORKER_ADDRESS = env_str("CP_WORKER_ADDRESS")
WORKER_CONCURRENCY = env_int("CP_WORKER_CONCURRENCY", 16, minimum=2, maximum=512)
WORKER_CPU_SLOTS = env_int("CP_WORKER_CPU_SLOTS", os.cpu_count() or 1, minimum=0, maximum=4096)
WORKER_NET_IFNAME = env_str("CP_WORKER_NET_IFNAME")
WORKER_CONTROL_QUEUE = env_bool("CP_WORKER_CONTROL_QUEUE", True)
WORKER_HEARTBEAT_INTERVAL = env_float("CP_WORKER_HEARTBEAT_INTERVAL", 5.0, minimum=0.2)
WORKER_OFFLINE_AFTER = env_float("CP_WORKER_OFFLINE_AFTER", 30.0, minimum=1.0)

# --- the workload runtime (workers/runtime/) -----------------------------------------------
# bwrap: every workload in a bubblewrap sandbox (the default; a worker without bubblewrap
# refuses work). off: run workloads as the worker's user, unsandboxed (trusted installs only).
SANDBOX = env_choice("CP_SANDBOX", "bwrap", ("bwrap", "off"))
# Where the worker runs as root, each project's workloads run as uid/gid BASE + project id
# (modulo COUNT): never the worker's user, and not another project's.
SANDBOX_UID_BASE = env_int("CP_SANDBOX_UID_BASE", 200000, minimum=1000, maximum=2**31 - 70000)
SANDBOX_UID_COUNT = env_int("CP_SANDBOX_UID_COUNT", 65536, minimum=1, maximum=65536)
SANDBOX_HIDE = [Path(p).resolve() for p in env_list("CP_SANDBOX_HIDE", [])]
# Environments built with uv, cached per host.
ENV_CACHE_DIR = Path(env_str("CP_ENV_CACHE_DIR", str(VAR_DIR / "envs"))).resolve()
# uv's download cache (wheels), shared by every build on this host.
ENV_UV_CACHE_DIR = Path(env_str("CP_ENV_UV_CACHE_DIR", str(ENV_CACHE_DIR / ".uv-cache"))).resolve()
ENV_CACHE_MAX_BYTES = env_int("CP_ENV_CACHE_MAX_BYTES", 20 * 1024**3, minimum=1024**2)
ENV_BUILD_TIMEOUT = env_float("CP_ENV_BUILD_TIMEOUT", 1800.0, minimum=10.0)
CONTAINER_RUNTIME = env_choice("CP_CONTAINER_RUNTIME", "auto", ("auto", "podman", "docker", "none"))
CONTROL_QUEUE = "control"

CELERY_BROKER_URL = BROKER_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_DEFAULT_QUEUE = CONTROL_QUEUE
CELERY_WORKER_CONCURRENCY = WORKER_CONCURRENCY
# Threads: a task that supervises a job's processes waits on pipes, not the CPU; and when
# the worker process dies, the jobs it supervised die with it (see workers/guard.py).
CELERY_WORKER_POOL = "threads"
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_TIMEZONE = "UTC"

# --- REST API ------------------------------------------------------------------------------
_RATE = re.compile(r"^\d+/(s|sec|second|m|min|minute|h|hour|d|day)$")


def _rate(name: str, default: str) -> str:
    value = env_str(name, default)
    if not _RATE.match(value):
        raise ImproperlyConfigured(f"{name}={value!r} must look like 100/min (s, min, hour, day).")
    return value


API_MAX_BODY_BYTES = env_int("CP_API_MAX_BODY_BYTES", 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Attempt tokens (cpat_...) first: they open /api/v1/attempt/ and nothing else.
        "jobs.attempt_auth.AttemptTokenAuthentication",
        "controlplane.tenancy.auth.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["controlplane.tenancy.api.common.LimitedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PAGINATION_CLASS": "controlplane.tenancy.api.common.Pagination",
    "PAGE_SIZE": env_int("CP_API_PAGE_SIZE", 50, minimum=1, maximum=1000),
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_THROTTLE_CLASSES": [
        # DRF's, failing open while Redis (where their counters live) is unreachable.
        "controlplane.degraded.UserRateThrottle",
        "controlplane.degraded.AnonRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "user": _rate("CP_THROTTLE_USER", "1200/min"),
        "anon": _rate("CP_THROTTLE_ANON", "60/min"),
    },
    "DEFAULT_SCHEMA_CLASS": "controlplane.schema.ControlPlaneSchema",
    "EXCEPTION_HANDLER": "controlplane.tenancy.api.common.exception_handler",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "GPU control plane API",
    "DESCRIPTION": "Training jobs, model serving and GPU telemetry. "
    "Authenticate with a session or `Authorization: Bearer <token>`.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "controlplane.schema.closed_request_bodies",
    ],
    "ENUM_NAME_OVERRIDES": {
        "JobStateEnum": "jobs.states.JobState",
        "AttemptStateEnum": "jobs.states.AttemptState",
        "NodeStateEnum": "jobs.models.NodeState",
        "StopReasonEnum": "jobs.states.StopReason",
        "PriorityEnum": ["low", "normal", "high"],
        "SweepStateEnum": "jobs.sweeps.models.SweepState",
        "TrialStateEnum": "jobs.sweeps.models.TrialState",
    },
}

# --- auth, pages, static -------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
CSRF_FAILURE_VIEW = "controlplane.views.csrf_failure"
# An open websocket re-checks its token and its user's access this often (revocations
# and removals also close it at once).
WS_RECHECK_SECONDS = env_float("CP_WS_RECHECK_SECONDS", 30.0, minimum=1.0)
# Login throttling (django-axes): after CP_LOGIN_FAILURE_LIMIT wrong passwords for one user
# from one address, that pair is locked out for CP_LOGIN_COOLOFF_MINUTES (a correct password
# included). Per user and address, so an attacker cannot lock the admin out everywhere.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("CP_LOGIN_FAILURE_LIMIT", 10, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("CP_LOGIN_COOLOFF_MINUTES", 15.0, minimum=0.1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "controlplane.tenancy.auth.client_ip"
AXES_HTTP_RESPONSE_CODE = 429
AXES_VERBOSE = False
# Content-Security-Policy (django-csp): scripts only from this site's own files (no inline
# script, no eval); styles may be inline (plotly sets them); the websockets and the API
# are same-origin; no framing.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [csp.SELF],
        "script-src": [csp.SELF],
        "style-src": [csp.SELF, csp.UNSAFE_INLINE],
        "img-src": [csp.SELF, "data:", "blob:"],
        "font-src": [csp.SELF, "data:"],
        "connect-src": [csp.SELF],
        "worker-src": [csp.SELF, "blob:"],
        "object-src": [csp.NONE],
        "base-uri": [csp.SELF],
        "form-action": [csp.SELF],
        "frame-ancestors": [csp.NONE],
    }
}
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "controlplane" / "static"]  # the shared page components
# Collected (hashed, gzipped) by `make run` at start, and only when a source changed.
STATIC_ROOT = Path(env_str("CP_STATIC_ROOT", str(VAR_DIR / "static"))).resolve()
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
WHITENOISE_USE_FINDERS = True
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "monitoring.staticfiles.PlotlyFinder",  # plotly.js from the plotly package, no CDN
]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Hashed names + gzip (controlplane.staticstorage): fetched once, cached for a year.
    "staticfiles": {"BACKEND": "controlplane.staticstorage.StaticStorage"},
}

ADMIN_PASSWORD = env_str("CP_ADMIN_PASSWORD")
AUDIT_RETENTION_DAYS = env_int("CP_AUDIT_RETENTION_DAYS", 365, minimum=1)
TOKEN_LAST_USED_RESOLUTION = 60  # seconds between writes of a token's last-used time
HTTP_HOST = env_str("CP_HTTP_HOST", "127.0.0.1")
HTTP_PORT = env_int("CP_HTTP_PORT", 8000, minimum=1, maximum=65535)

LOG_LEVEL = env_choice("CP_LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    # "Not ready" is /readyz's answer, not a server error: keep it out of the error log.
    "filters": {"not_readyz": {"()": "controlplane.logs.NotReadyzFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["not_readyz"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- queues: this host's queue, plus the control queue for control-plane tasks -------------
HOST_QUEUE = f"host.{HOSTNAME}"


def _queue(name: str) -> Queue:
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


CELERY_TASK_QUEUES = [
    _queue(HOST_QUEUE),
    *([_queue(CONTROL_QUEUE)] if WORKER_CONTROL_QUEUE else []),
]
SCHEDULER_INTERVAL = env_float("CP_SCHEDULER_INTERVAL", 1.0, minimum=0.1, maximum=60)
CELERY_BEAT_SCHEDULE = {
    "purge-audit-events": {"task": "tenancy.purge_audit_events", "schedule": 3600.0},
    "jobs-tick": {
        "task": "jobs.tick",
        "schedule": SCHEDULER_INTERVAL,
        "options": {"expires": max(2.0, SCHEDULER_INTERVAL * 2), "queue": CONTROL_QUEUE},
    },
    # A webhook delivery whose task never ran (the broker was away when it was queued).
    "webhooks-resend": {"task": "notifications.resend", "schedule": 60.0},
}

# --- jobs ----------------------------------------------------------------------------------
STORAGE_DIR = Path(env_str("CP_STORAGE_DIR", str(VAR_DIR / "storage"))).resolve()
STORAGE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
JOB_CODE_DIRS = [Path(p).resolve() for p in env_list("CP_JOB_CODE_DIRS", [])]
JOB_BUILTIN_MODULES = env_list("CP_JOB_BUILTIN_MODULES", ["workers.recipes."])
JOB_CODE_MAX_BYTES = env_int("CP_JOB_CODE_MAX_BYTES", 50 * 1024 * 1024, minimum=1024)
JOB_CODE_MAX_FILES = env_int("CP_JOB_CODE_MAX_FILES", 10_000, minimum=1)
JOB_LEASE_SECONDS = env_float("CP_JOB_LEASE_SECONDS", 30.0, minimum=1.0)
JOB_LEASE_RENEW_INTERVAL = env_float(
    "CP_JOB_LEASE_RENEW_INTERVAL", max(0.5, JOB_LEASE_SECONDS / 6), minimum=0.1
)
JOB_START_TIMEOUT = env_float("CP_JOB_START_TIMEOUT", 120.0, minimum=1.0)
# A start message not claimed this long after it was sent is sent again (claims are
# idempotent): one lost with the broker delays a job by seconds, not the start timeout.
JOB_START_RESEND = env_float("CP_JOB_START_RESEND", 5.0, minimum=0.5)
JOB_STOP_GRACE_SECONDS = env_float("CP_JOB_STOP_GRACE_SECONDS", 30.0, minimum=0.0)
# A job that failed restarts after a pause that doubles with each failure (a crash loop
# does not spin): BACKOFF seconds before the first restart, at most BACKOFF_MAX.
JOB_RESTART_BACKOFF = env_float("CP_JOB_RESTART_BACKOFF", 1.0, minimum=0.0)
JOB_RESTART_BACKOFF_MAX = env_float("CP_JOB_RESTART_BACKOFF_MAX", 60.0, minimum=0.0)
JOB_LOG_CAP_BYTES = env_int("CP_JOB_LOG_CAP_BYTES", 20 * 1024 * 1024, minimum=1024)
# Webhooks: tries per delivery (backoff doubling from the base), the request timeout, and
# whether loopback/private addresses may be sent to (tests, an internal receiver).
WEBHOOK_TRIES = env_int("CP_WEBHOOK_TRIES", 5, minimum=1, maximum=20)
WEBHOOK_RETRY_SECONDS = env_float("CP_WEBHOOK_RETRY_SECONDS", 10.0, minimum=0.0)
WEBHOOK_TIMEOUT = env_float("CP_WEBHOOK_TIMEOUT", 10.0, minimum=0.5)
WEBHOOK_ALLOW_PRIVATE = env_bool("CP_WEBHOOK_ALLOW_PRIVATE", False)
# A job's outputs kept from its working directory when a node ends (besides the project's
# storage quota): at most this many bytes and files.
JOB_OUTPUTS_MAX_BYTES = env_int("CP_JOB_OUTPUTS_MAX_BYTES", 10 * 1024**3, minimum=0)
JOB_OUTPUTS_MAX_FILES = env_int("CP_JOB_OUTPUTS_MAX_FILES", 10_000, minimum=0)
MODEL_UPLOAD_MAX_BYTES = env_int("CP_MODEL_UPLOAD_MAX_BYTES", 10 * 1024**3, minimum=1024)
# An upload may unpack to at most this many times its own size (decompression bombs), and
# never so far that the storage disk keeps less than CP_STORAGE_MIN_FREE_BYTES free.
UPLOAD_MAX_EXPANSION = env_float("CP_UPLOAD_MAX_EXPANSION", 20.0, minimum=1.0)
STORAGE_MIN_FREE_BYTES = env_int("CP_STORAGE_MIN_FREE_BYTES", 1024**3, minimum=0)
# PostgreSQL ends a session left idle inside a transaction this long (0: never), so a
# frozen or cut-off process cannot hold row locks that the reaper needs to give its jobs
# up: a stalled worker's jobs are placed again within about two leases, not never.
DB_IDLE_IN_TRANSACTION_TIMEOUT = env_float(
    "CP_DB_IDLE_IN_TRANSACTION_TIMEOUT", max(5.0, JOB_LEASE_SECONDS), minimum=0.0
)
if JOB_LEASE_RENEW_INTERVAL * 2 > JOB_LEASE_SECONDS:
    raise ImproperlyConfigured(
        "CP_JOB_LEASE_RENEW_INTERVAL must be at most half of CP_JOB_LEASE_SECONDS."
    )

# --- serving -------------------------------------------------------------------------------
SERVING_REPLICA_MAX_RESTARTS = env_int("CP_SERVING_REPLICA_MAX_RESTARTS", 5, minimum=0)
SERVING_RECONCILE_INTERVAL = env_float("CP_SERVING_RECONCILE_INTERVAL", 1.0, minimum=0.2)
CELERY_BEAT_SCHEDULE["serving-reconcile"] = {
    "task": "serving.reconcile",
    "schedule": SERVING_RECONCILE_INTERVAL,
    "options": {"expires": max(2.0, SERVING_RECONCILE_INTERVAL * 2), "queue": CONTROL_QUEUE},
}
# The gateway (/v1 on the web server, or `python -m serving.gateway`).
GATEWAY_MAX_BODY_BYTES = env_int("CP_GATEWAY_MAX_BODY_BYTES", 1024 * 1024, minimum=1024)
GATEWAY_COLD_START_TIMEOUT = env_float("CP_GATEWAY_COLD_START_TIMEOUT", 300.0, minimum=1.0)
GATEWAY_RETRIES = env_int("CP_GATEWAY_RETRIES", 3, minimum=0, maximum=10)
GATEWAY_REFRESH_SECONDS = env_float("CP_GATEWAY_REFRESH_SECONDS", 5.0, minimum=0.5)
# A deployment with prefix_affinity: how much of a prompt is its prefix, and how many more
# outstanding requests than the least busy replica its preferred replica may have.
GATEWAY_AFFINITY_CHARS = env_int("CP_GATEWAY_AFFINITY_CHARS", 256, minimum=8, maximum=65536)
GATEWAY_AFFINITY_SLACK = env_int("CP_GATEWAY_AFFINITY_SLACK", 4, minimum=0, maximum=10000)
# Batch inference inputs (POST /api/v1/batch-jobs/).
BATCH_MAX_INPUT_BYTES = env_int("CP_BATCH_MAX_INPUT_BYTES", 256 * 1024**2, minimum=1024)
BATCH_MAX_ROWS = env_int("CP_BATCH_MAX_ROWS", 1_000_000, minimum=1)
GATEWAY_BALANCE = env_choice(
    "CP_GATEWAY_BALANCE", "least_outstanding", ("least_outstanding", "round_robin")
)

# --- telemetry -----------------------------------------------------------------------------
TELEMETRY_ENABLED = env_bool("CP_TELEMETRY_ENABLED", True)
TELEMETRY_INTERVAL = env_float("CP_TELEMETRY_INTERVAL", 1.0, minimum=0.1, maximum=60)
TELEMETRY_HISTORY_STEP = env_int("CP_TELEMETRY_HISTORY_STEP", 10, minimum=1, maximum=30)
if 60 % TELEMETRY_HISTORY_STEP:
    raise ImproperlyConfigured("CP_TELEMETRY_HISTORY_STEP must divide 60 (1, 2, 5, 10, ...).")
TELEMETRY_FINE_HOURS = env_float("CP_TELEMETRY_FINE_HOURS", 24.0, minimum=0.1)
TELEMETRY_RETENTION_DAYS = env_float("CP_TELEMETRY_RETENTION_DAYS", 30.0, minimum=0.1)
TELEMETRY_RECENT_SECONDS = env_int("CP_TELEMETRY_RECENT_SECONDS", 900, minimum=60, maximum=86400)
TELEMETRY_RECENT_POINTS = max(1, int(TELEMETRY_RECENT_SECONDS / max(1.0, TELEMETRY_INTERVAL)))
TELEMETRY_WS_BUFFER = env_int("CP_TELEMETRY_WS_BUFFER", 32, minimum=1, maximum=10000)
METRICS_TOKEN = env_str("CP_METRICS_TOKEN")
METRICS_LOOPBACK_OPEN = env_bool("CP_METRICS_LOOPBACK_OPEN", True)
# Telemetry fans out through Redis pub/sub: one PUBLISH per group and sample however many
# browsers watch; each web process hands it to its own sockets (bounded buffers there).
CHANNEL_LAYERS["telemetry"] = {
    "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
    "CONFIG": {"hosts": [_LAYER_HOST], "prefix": f"{CACHE_PREFIX}:tm"},
}
CELERY_BEAT_SCHEDULE["telemetry-history"] = {
    "task": "monitoring.maintain_history",
    "schedule": 600.0,
    "options": {"expires": 600, "queue": CONTROL_QUEUE},
}
