"""Settings for the test suite: tasks run in-process and nothing points at the internet."""

import os
import tempfile

os.environ.setdefault("DEBUG", "true")

from project.settings import *  # noqa: F403
from project.settings import DATABASES, Q_CLUSTER

Q_CLUSTER = {**Q_CLUSTER, "sync": True}

# Unreachable defaults: a test that forgets its fake fails instead of calling the internet.
STRIPE_API_KEY = "sk_test_unset"
STRIPE_API_BASE = "http://127.0.0.1:9"
STRIPE_METER_EVENTS_API_BASE = "http://127.0.0.1:9"
OPENMETER_URL = "http://127.0.0.1:9"
STRIPE_MAX_NETWORK_RETRIES = 2
REPORT_LOCK_WAIT_SECONDS = 2

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Subprocess tests (a report_usage killed halfway) share the test database, so SQLite's test
# database is a file, not memory.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {
        "NAME": os.path.join(tempfile.gettempdir(), f"meterbridge-test-{os.getpid()}.sqlite3")
    }

STRIPE_RETRY_BACKOFF_SECONDS = 0.01
STRIPE_SEND_CONCURRENCY = 8
