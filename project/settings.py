"""Settings, read from the environment (and an optional .env file) with django-environ.

Every variable in DESIGN.md's configuration table is read here with its documented default.
"""

from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)

if DEBUG:
    SECRET_KEY = env.str("SECRET_KEY", default="dev-only-insecure-key-do-not-use-in-production")
    ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
else:
    # Production must say who it is: no silent fallback to a guessable key or open hosts. The
    # refusal is billing.checks' (check, runserver, qcluster) and the WSGI/ASGI entry points',
    # so offline commands such as makemigrations still load without secrets.
    SECRET_KEY = env.str("SECRET_KEY", default="")
    ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[])

INSTALLED_APPS = [
    # Django's admin with project.auth.MeterbridgeAdminSite as admin.site (optional TOTP).
    "project.apps.MeterbridgeAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_q",
    "axes",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "billing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # The project's own admin templates (base_site.html: name and demo banner) come first.
        "DIRS": [BASE_DIR / "project" / "templates"],
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

WSGI_APPLICATION = "project.wsgi.application"

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The scheduler, the workers and the web server share one SQLite file: wait for locks, and
    # take the write lock when a transaction begins (workers doing parts of one run write side
    # by side; a transaction that read first and then wants to write could not wait, it fails).
    options = DATABASES["default"].setdefault("OPTIONS", {})
    options.setdefault("timeout", 30)
    options.setdefault("transaction_mode", "IMMEDIATE")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

LOGIN_URL = "admin:login"

# --- Login guard rails ----------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    # First: refuses a locked-out username+IP before any password is checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# django-axes: after AXES_FAILURE_LIMIT wrong passwords for one username from one IP address,
# that combination is locked out for AXES_COOLOFF_MINUTES (0: until an administrator runs
# `manage.py axes_reset_username USER`). A successful login clears the count. Behind a reverse
# proxy every client has the proxy's address, so the lockout is then in effect per username.
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
_axes_cooloff_minutes = env.float("AXES_COOLOFF_MINUTES", default=60)
AXES_COOLOFF_TIME = timedelta(minutes=_axes_cooloff_minutes) if _axes_cooloff_minutes else None
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_HTTP_RESPONSE_CODE = 429
AXES_LOCKOUT_CALLABLE = "project.auth.lockout_response"

# django-otp: with ADMIN_REQUIRE_2FA on, staff need a TOTP device (`manage.py enroll_totp USER`)
# and sign in to the admin with username, password and the authenticator app's 6-digit code.
ADMIN_REQUIRE_2FA = env.bool("ADMIN_REQUIRE_2FA", default=False)
OTP_TOTP_ISSUER = env.str("OTP_TOTP_ISSUER", default="Meterbridge")

# Trusted only when set: a client could otherwise claim HTTPS with its own X-Forwarded-Proto.
# Set it ("HTTP_X_FORWARDED_PROTO,https") only behind a proxy that overwrites that header.
_proxy_ssl_header = env.list("SECURE_PROXY_SSL_HEADER", default=[])
if _proxy_ssl_header:
    if len(_proxy_ssl_header) != 2:
        raise ImproperlyConfigured(
            "SECURE_PROXY_SSL_HEADER must be 'HEADER,value', e.g. 'HTTP_X_FORWARDED_PROTO,https'"
        )
    SECURE_PROXY_SSL_HEADER = (_proxy_ssl_header[0], _proxy_ssl_header[1])

if not DEBUG:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    # Behind a proxy that terminates TLS, also set SECURE_PROXY_SSL_HEADER (above): without it
    # every request looks like plain HTTP and is redirected forever. SECURE_SSL_REDIRECT=false
    # when the proxy itself redirects HTTP to HTTPS.
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True

# --- Stripe -------------------------------------------------------------------------------
STRIPE_API_KEY = env.str("STRIPE_API_KEY", default="") or None
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="https://api.stripe.com")
STRIPE_METER_EVENTS_API_BASE = env.str(
    "STRIPE_METER_EVENTS_API_BASE", default="https://meter-events.stripe.com"
)
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="") or None
STRIPE_METER_EVENT_STREAM = env.bool("STRIPE_METER_EVENT_STREAM", default=False)
STRIPE_MAX_REQUESTS_PER_SECOND = env.float("STRIPE_MAX_REQUESTS_PER_SECOND", default=20)
STRIPE_MAX_NETWORK_RETRIES = env.int("STRIPE_MAX_NETWORK_RETRIES", default=3)
STRIPE_TIMEOUT = env.float("STRIPE_TIMEOUT", default=30)

# --- OpenMeter ----------------------------------------------------------------------------
OPENMETER_URL = env.str("OPENMETER_URL", default="https://openmeter.cloud")
OPENMETER_API_TOKEN = env.str("OPENMETER_API_TOKEN", default="") or None
OPENMETER_TIMEOUT = env.float("OPENMETER_TIMEOUT", default=30)

# --- Reporting ----------------------------------------------------------------------------
REPORT_SCHEDULE_CRON = env.str("REPORT_SCHEDULE_CRON", default="5 * * * *")
REPORT_LOOKBACK_HOURS = env.int("REPORT_LOOKBACK_HOURS", default=48)
# How long a run waits for another run that holds a meter before skipping that meter.
REPORT_LOCK_WAIT_SECONDS = env.float("REPORT_LOCK_WAIT_SECONDS", default=60)
# A run is split into parts, one per meter, that any worker may take; a meter with more active
# customers than this is split further into shards of at most this many (up to 16 shards).
REPORT_SHARD_CUSTOMERS = env.int("REPORT_SHARD_CUSTOMERS", default=1000)

# --- Reading back what Stripe bills -------------------------------------------------------
# STRIPE_WEBHOOK_SECRET (above) holds Stripe's signing secrets, comma-separated: one per webhook
# endpoint or event destination.
RECONCILE_SCHEDULE_CRON = env.str("RECONCILE_SCHEDULE_CRON", default="30 3 * * *")
RECONCILE_LOOKBACK_HOURS = env.int("RECONCILE_LOOKBACK_HOURS", default=72)
# Windows sent more recently are "settling": Stripe's summaries are eventually consistent.
RECONCILE_SETTLE_MINUTES = env.float("RECONCILE_SETTLE_MINUTES", default=15)

# --- django-q2 ----------------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="") or None
REPORT_TASK_TIMEOUT = env.int("REPORT_TASK_TIMEOUT", default=50 * 60)

Q_CLUSTER: dict[str, object] = {
    # Every process of one site shares the name (it names the Redis queue and signs tasks).
    "name": env.str("Q_CLUSTER_NAME", default="meterbridge"),
    "workers": env.int("Q_WORKERS", default=2),
    # A report may take long: it must not be handed to a second worker while the first still
    # works on it (retry > timeout), and a failed task is not retried forever.
    "timeout": REPORT_TASK_TIMEOUT,
    "retry": REPORT_TASK_TIMEOUT + 10 * 60,
    "max_attempts": 1,
    "catch_up": False,
    "save_limit": 1000,
    "label": "Background tasks",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # Secrets are masked in messages, tracebacks and stacks: by the filter on the record, and by
    # the formatter on the text it writes.
    "filters": {"redact": {"()": "billing.redaction.RedactSecretsFilter"}},
    "formatters": {"redacted": {"class": "billing.redaction.RedactingFormatter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["redact"],
            "formatter": "redacted",
        },
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "httpx": {"level": "WARNING"},
        "stripe": {"level": "WARNING"},
    },
}

# --- Sending meter events ---------------------------------------------------------------------
STRIPE_SEND_CONCURRENCY = env.int("STRIPE_SEND_CONCURRENCY", default=16)
# A reconciliation's summaries reads in flight (still capped by the rate): more than sending, as
# its reading threads also wait for the interpreter while the task loads the next meter.
STRIPE_READ_CONCURRENCY = env.int("STRIPE_READ_CONCURRENCY", default=32)
STRIPE_SEND_MAX_ATTEMPTS = env.int("STRIPE_SEND_MAX_ATTEMPTS", default=8)
STRIPE_RETRY_BACKOFF_SECONDS = env.float("STRIPE_RETRY_BACKOFF_SECONDS", default=0.5)

# Demo mode (`dev.py serve` without Stripe and OpenMeter settings): the app talks to the local
# emulators, and every admin page says so. Set by dev.py, never in production.
DEMO_MODE = env.bool("METERBRIDGE_DEMO", default=False)

# The quick start's local login (only created with DEBUG on and no superuser yet).
DEV_ADMIN_PASSWORD = env.str("DEV_ADMIN_PASSWORD", default="meterbridge")
