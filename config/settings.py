"""Settings for every deployment, read from the environment; each knob has a safe default for a laptop."""

import os
from pathlib import Path

import dj_database_url

from config.mcp_config import parse_mcp_servers, parse_seconds
from config.security import (
    login_lockout_parameters,
    positive_int,
    proxy_ssl_header,
    refuse_sqlite_for_reachable_server,
    secret_key_from_environment,
    served_locally,
    warn_about_allowed_hosts,
)

# litellm fetches a model price list from the internet at import unless this is set first.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("CHATROOMS_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name, "")
    items = [item.strip() for item in value.split(",") if item.strip()]
    return items or default


# DANGEROUS: DJANGO_DEBUG=true shows tracebacks and settings to anyone who can reach the server.
DEBUG = env_bool("DJANGO_DEBUG", False)

# DANGEROUS: `*` answers any Host header (and a loud warning says so at every start).
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
warn_about_allowed_hosts(ALLOWED_HOSTS)
# Origins other than the site's own that may POST forms and open the WebSocket
# (config/websocket_origin.py), e.g. `https://chat.example.com`. DANGEROUS: list only origins you control.
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
# Only loopback host names (the default): nobody but this machine can use the server, over plain http.
SERVED_LOCALLY = served_locally(ALLOWED_HOSTS)

# DANGEROUS: the secret signs sessions, CSRF tokens and password-reset links. Required on a server
# others can reach (startup fails without it, or with one Django's deploy check calls weak); a laptop (only loopback hosts, or DEBUG on) without it
# gets a random key of its own, made once in $CHATROOMS_VAR_DIR/secret_key (config/security.py).
SECRET_KEY = secret_key_from_environment(value=os.environ.get("DJANGO_SECRET_KEY", "").strip(), debug=DEBUG,
                                         allowed_hosts=ALLOWED_HOSTS, var_dir=VAR_DIR)

# -- HTTPS -------------------------------------------------------------------------------------
# Served over HTTPS (directly or behind a proxy that terminates TLS): session and CSRF cookies go
# over HTTPS only. On by default, except on a laptop (SERVED_LOCALLY or DEBUG). DANGEROUS: false on
# a server others reach over the network sends the session cookie in clear text; only for a
# deployment that really is plain http (a private network).
HTTPS = env_bool("DJANGO_HTTPS", not (DEBUG or SERVED_LOCALLY))
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
# Redirect plain http to https. Off by default: a proxy usually does it, and behind a proxy Django
# sees https only with DJANGO_SECURE_PROXY_SSL_HEADER (without it, every request would redirect).
SECURE_SSL_REDIRECT = env_bool("DJANGO_SSL_REDIRECT", False)
# DANGEROUS: `X-Forwarded-Proto: https` makes Django trust that header for "this request came over
# HTTPS". Set it only behind a proxy that always sets (or strips) that header itself.
SECURE_PROXY_SSL_HEADER = proxy_ssl_header(os.environ.get("DJANGO_SECURE_PROXY_SSL_HEADER", ""))
# HTTP Strict Transport Security. DANGEROUS when wrong: browsers then refuse plain http for this long
# (0, the default: no HSTS header). Subdomains and preload extend it; both are hard to take back.
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", False)
# Headers on every response: no framing by other sites, no content sniffing, no full-URL referrers.
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "channels",
    "django_htmx",
    "template_partials",
    "streaming",
    "chatrooms",
]

MIDDLEWARE = [
    # First: a local health check (`curl http://127.0.0.1:8001/healthz`) answers without the Host and
    # HTTPS checks below; only that path, only from loopback (chatrooms/health.py).
    "chatrooms.health.LocalHealthCheckMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "csp.middleware.CSPMiddleware",
    # Last, as django-axes asks: turns a refused (locked-out) login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

# -- login throttling (django-axes; config/login_throttle.py) ----------------------------------
# Failed logins on /accounts/login/ and /admin/login/ alike are counted per account from an address
# and per address (LOGIN_LOCKOUT_BY); at LOGIN_FAILURE_LIMIT failures within LOGIN_LOCKOUT_SECONDS,
# further logins of that account from that address, or any from that address, are refused with 429
# until LOGIN_LOCKOUT_SECONDS after the last counted failure. Attempts while locked out are not
# counted (they do not prolong a lockout), and a successful login clears only that account's
# failures from that address. By default nobody can lock a person out from elsewhere; with
# `username` in LOGIN_LOCKOUT_BY an account is locked from every address (stricter against
# guessing from many addresses, but anyone can then keep an account locked). Behind a proxy, daphne
# needs --proxy-headers (deploy/chatrooms@.service has it), or every client shares the proxy's address.
AUTHENTICATION_BACKENDS = [
    "config.login_throttle.LoginThrottleBackend",  # first: refuses a locked-out login before any password check
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_FAILURE_LIMIT = positive_int("LOGIN_FAILURE_LIMIT", os.environ.get("LOGIN_FAILURE_LIMIT", ""), 10)
LOGIN_LOCKOUT_SECONDS = positive_int("LOGIN_LOCKOUT_SECONDS", os.environ.get("LOGIN_LOCKOUT_SECONDS", ""), 300)
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = "config.login_throttle.lockout_duration"  # LOGIN_LOCKOUT_SECONDS, read at each attempt
AXES_LOCKOUT_PARAMETERS = login_lockout_parameters(os.environ.get("LOGIN_LOCKOUT_BY", "") or "username+ip_address,ip_address")
AXES_RESET_ON_SUCCESS = True
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "config.login_throttle.lockout_response"
AXES_HANDLER = "config.login_throttle.OwnFailuresHandler"  # in the database: shared by every worker, like the rooms
AXES_DISABLE_ACCESS_LOG = True  # no row per successful login: only failures are kept, and only while they count
AXES_VERBOSE = False  # no banner at every start

# -- Content-Security-Policy (django-csp) on every HTML page -----------------------------------
# Only this site's own script and styles run: no inline <script>, no inline event handlers, no
# style attributes (templates keep theirs in static/chatrooms/). `'self'` in connect-src covers the
# WebSocket (ws: and wss: of the same host) in CSP Level 3 browsers.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:", "blob:"],
        "connect-src": ["'self'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
        "base-uri": ["'self'"],
        "object-src": ["'none'"],
    },
}

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

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

# Unset DATABASE_URL: a SQLite file in WAL mode. IMMEDIATE transactions take the write lock at
# BEGIN, so two writers queue on the busy timeout instead of failing with "database is locked".
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "db.sqlite3",
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
            },
            # A file, not memory, so that threads and test-started servers share one database;
            # one per test process, so that two runs on one machine never share it.
            "TEST": {"NAME": str(VAR_DIR / f"test-db-{os.getpid()}.sqlite3")},
        }
    }
# A server others reach runs several workers on one PostgreSQL; SQLite there is nearly always an
# environment that did not arrive (a command run without /etc/chatrooms.env would migrate a new, empty
# file). DANGEROUS: CHATROOMS_ALLOW_SQLITE=true serves the public from SQLite (one worker only).
refuse_sqlite_for_reachable_server(engine=DATABASES["default"]["ENGINE"], allowed_hosts=ALLOWED_HOSTS,
                                   allowed=env_bool("CHATROOMS_ALLOW_SQLITE", False))
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3" and DATABASE_URL:
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
         "transaction_mode": "IMMEDIATE", "timeout": 30}
    )
# Each thread keeps its connection between calls (checked before reuse) instead of opening one per
# `database_sync_to_async` call: opening a SQLite connection (the file, the PRAGMAs, Django's SQL
# functions) cost 11% of a busy worker's CPU (docs/benchmarks.md). A PostgreSQL connection is a
# server process: several workers' threads keep theirs only when DATABASE_CONN_MAX_AGE says so.
DATABASES["default"]["CONN_MAX_AGE"] = env_int(
    "DATABASE_CONN_MAX_AGE", 600 if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3" else 0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Unset REDIS_URL: one process, an in-memory channel layer and cache. Set: channels-redis's
# pub/sub layer (unbounded per-connection queues; the default layer drops bursts) and a Redis cache.
REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    import redis.exceptions

    # After a Redis restart every pooled connection is dead: a command that meets one is retried once
    # on a new connection instead of failing (a lost publish or a refused chat frame).
    REDIS_RETRY = {"retry_on_error": [redis.exceptions.ConnectionError]}
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [{"address": REDIS_URL, **REDIS_RETRY}]},
        }
    }
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
                          "OPTIONS": REDIS_RETRY}}
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "streaming.layers.OneProcessChannelLayer",
            "CONFIG": {"capacity": env_int("CHANNEL_CAPACITY", 1000),
                       "group_expiry": env_int("CHANNEL_GROUP_EXPIRY_SECONDS", 86400)},
        }
    }
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"
SIGNUP_ENABLED = env_bool("SIGNUP_ENABLED", True)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", BASE_DIR / "staticfiles"))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns about a missing one before collectstatic
# Hashed names (`chat.3f2a9c1b.js`, from the manifest collectstatic writes): a server's files may be
# cached for long (nginx: `expires 30d`) and an upgrade still reaches every browser at once. On by
# default, except on a laptop (SERVED_LOCALLY or DEBUG) and in the test suite, which never run
# collectstatic. With it on, collectstatic must run before the workers start, or pages fail with
# "Missing staticfiles manifest entry".
STATIC_MANIFEST = env_bool("DJANGO_STATIC_MANIFEST", not (DEBUG or SERVED_LOCALLY))
# WhiteNoise serves static files from every worker: the collected ones, and (so that a checkout
# that never ran collectstatic, like the test suite, still has them) the apps' own.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage" if STATIC_MANIFEST
                    else "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

# -- the assistant -----------------------------------------------------------------------------
# LLM_MODEL is the default model; LLM_MODELS (comma-separated, "id" or "id=Label") the models a
# room may pick. `local/demo` is the built-in offline model: it needs no network and no key.
LLM_MODEL = os.environ.get("LLM_MODEL", "").strip()
LLM_MODELS = env_list("LLM_MODELS", [])
LLM_API_BASE = os.environ.get("LLM_API_BASE", "").strip() or None
LLM_API_KEY = os.environ.get("LLM_API_KEY", "").strip() or None
LLM_MAX_STEPS = env_int("LLM_MAX_STEPS", 5)
LLM_SYSTEM_PROMPT = os.environ.get("LLM_SYSTEM_PROMPT", "You are a helpful assistant in a chat room.")
LLM_TIMEOUT_SECONDS = env_int("LLM_TIMEOUT_SECONDS", 120)
# The tokens of conversation sent to the model at each step: older tool outputs are compacted, then
# older turns dropped, to fit (chatrooms/context.py). Leave room under the model's real window for
# the tool definitions and the answer.
LLM_CONTEXT_TOKENS = env_int("LLM_CONTEXT_TOKENS", 32000)
# Milliseconds between the built-in model's words: a pace a person can watch.
LOCAL_MODEL_DELAY_MS = env_int("LOCAL_MODEL_DELAY_MS", 25)

# -- tools ------------------------------------------------------------------------------------
# Modules whose @tool functions join the built-in ones (comma-separated dotted paths).
TOOL_MODULES = env_list("TOOL_MODULES", [])
# How long a reply waits for a person's approval or a client's tool result before giving up.
TOOL_WAIT_SECONDS = env_int("TOOL_WAIT_SECONDS", 300)
# An assistant message stored larger than this has its tool outputs compacted, then its text cut.
MESSAGE_MAX_BYTES = env_int("MESSAGE_MAX_BYTES", 256 * 1024)

# -- tools from MCP servers --------------------------------------------------------------------
# MCP_SERVERS: a JSON list, each entry {"name", "command", "args"?, "env"?} (a stdio subprocess) or
# {"name", "url", "headers"?} (streamable HTTP); a bad entry stops startup. DANGEROUS: a stdio
# entry runs its command as this process's user, and every server's tools are offered to the model.
# A stdio server gets only PATH, HOME and a few such variables from this environment, plus its "env".
MCP_SERVERS = parse_mcp_servers(os.environ.get("MCP_SERVERS", ""))
# How long building a reply waits for servers that are still connecting; later replies get them.
MCP_WAIT_SECONDS = parse_seconds("MCP_WAIT_SECONDS", os.environ.get("MCP_WAIT_SECONDS", ""), 5)
MCP_CALL_TIMEOUT_SECONDS = parse_seconds("MCP_CALL_TIMEOUT_SECONDS", os.environ.get("MCP_CALL_TIMEOUT_SECONDS", ""), 60)

# -- rooms -------------------------------------------------------------------------------------
# The most finished messages a room keeps; each finished answer removes the oldest beyond it.
# 0 (the default): no limit.
ROOM_MAX_MESSAGES = env_int("ROOM_MAX_MESSAGES", 0)
# The largest room export file (JSON) a user may import as a new room.
IMPORT_MAX_BYTES = env_int("IMPORT_MAX_BYTES", 5 * 1024 * 1024)
# The largest text file a user may attach to a message (its whole text goes to the model).
ATTACHMENT_MAX_BYTES = env_int("ATTACHMENT_MAX_BYTES", 256 * 1024)

# -- limits per user (chatrooms/limits.py); 0 turns one off ------------------------------------
# Counters live in the cache: with REDIS_URL they hold across workers; without it, per process.
RATE_CHAT_PER_MINUTE = env_int("RATE_CHAT_PER_MINUTE", 30)  # chat.send, chat.regenerate, chat.edit
STREAMS_PER_USER = env_int("STREAMS_PER_USER", 3)  # answers streaming at once, across rooms
ROOMS_PER_HOUR = env_int("ROOMS_PER_HOUR", 30)  # room.create and the page's form
SOCKETS_PER_USER = env_int("SOCKETS_PER_USER", 20)  # open WebSockets; more are closed with 4429
# An open socket re-reads its session and its room's access this often (a timer; a frame too, if the
# last read is older): a session that expired, a user deactivated or removed from the room is noticed
# then, even if the event that says so was lost. A logout closes the session's sockets at once.
SESSION_RECHECK_SECONDS = env_int("SESSION_RECHECK_SECONDS", 30)

# -- streams -----------------------------------------------------------------------------------
STREAM_FLUSH_CHUNKS = env_int("STREAM_FLUSH_CHUNKS", 10)
STREAM_FLUSH_MS = env_int("STREAM_FLUSH_MS", 100)
STREAM_BUFFER_MAX_CHUNKS = env_int("STREAM_BUFFER_MAX_CHUNKS", 5000)
STREAM_CHUNK_MAX_BYTES = env_int("STREAM_CHUNK_MAX_BYTES", 65536)
STREAM_HEARTBEAT_SECONDS = env_int("STREAM_HEARTBEAT_SECONDS", 5)
STREAM_STALE_SECONDS = env_int("STREAM_STALE_SECONDS", 30)
STREAM_RETENTION_HOURS = env_int("STREAM_RETENTION_HOURS", 24)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "LiteLLM": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},  # the MCP SDK's HTTP client: a line per request otherwise
        "daphne": {"level": "WARNING"},
    },
}
