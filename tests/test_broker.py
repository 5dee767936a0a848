"""With REDIS_URL set, django-q2 queues through Redis: a task goes in and comes back out."""

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.helpers import skip_or_fail

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

SCRIPT = """
import django
django.setup()
from django_q.brokers import get_broker
from django_q.conf import Conf
broker = get_broker()
assert type(broker).__name__ == "Redis", type(broker)
assert broker.ping()
broker.purge_queue()
broker.enqueue("meterbridge-test-task")
task = broker.dequeue()
assert task and task[0][1] == b"meterbridge-test-task", task
print("redis broker ok", Conf.PREFIX)
"""


def test_redis_broker_round_trip():
    try:
        socket.create_connection(("127.0.0.1", 6379), 2).close()
    except OSError:
        skip_or_fail("Redis is not running on 127.0.0.1:6379")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DEBUG": "true",
        "REDIS_URL": REDIS_URL,
        "DATABASE_URL": "sqlite:///:memory:",
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "redis broker ok" in result.stdout
