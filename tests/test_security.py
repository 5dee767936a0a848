"""Secrets stay out of errors; production settings refuse to start half-configured."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from billing.integrations import stripe_sync
from billing.models import Customer, SyncStatus
from billing.redaction import redact

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.django_db
def test_a_rejected_key_never_reaches_the_error_column(fake_stripe, settings):
    settings.STRIPE_API_KEY = "sk_test_this-is-a-secret-key-0123456789"
    customer = Customer.objects.create(name="Acme", openmeter_subject="acme")
    settings.STRIPE_API_KEY = "bogus_secret_key_value_42"
    assert not stripe_sync.sync_object(customer)
    customer.refresh_from_db()
    assert customer.sync_status == SyncStatus.FAILED
    assert "401" in customer.sync_error
    assert "bogus_secret_key_value_42" not in customer.sync_error


def test_redact_masks_configured_secrets_and_stripe_shaped_keys(settings):
    settings.OPENMETER_API_TOKEN = "om-token-abcdef"
    text = redact("token om-token-abcdef and key sk_live_51Habcdefghijkl and whsec_abcdefghij")
    assert "om-token-abcdef" not in text
    assert "sk_live_51Habcdefghijkl" not in text and "whsec_abcdefghij" not in text
    assert text.count("[redacted]") == 3


def production_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "ALLOWED_HOSTS"}}
    env.update({"DJANGO_SETTINGS_MODULE": "project.settings", "DEBUG": "false"}, **extra)
    return env


def run(*command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)


def test_production_refuses_to_serve_without_secret_key_and_hosts():
    env = production_env()
    web = run(sys.executable, "-c", "import project.wsgi", env=env)
    assert web.returncode != 0
    assert "SECRET_KEY and ALLOWED_HOSTS must be set" in web.stderr
    deploy = run(sys.executable, "manage.py", "check", "--deploy", env=env)
    assert deploy.returncode != 0
    assert "SECRET_KEY and ALLOWED_HOSTS must be set" in deploy.stderr
    server = run(sys.executable, "manage.py", "runserver", "127.0.0.1:9", "--noreload", env=env)
    assert server.returncode != 0 and "ALLOWED_HOSTS" in server.stderr


def test_offline_commands_load_without_production_secrets():
    result = run(
        sys.executable, "manage.py", "makemigrations", "--check", "--dry-run", env=production_env()
    )
    assert result.returncode == 0, result.stderr
    assert "No changes detected" in result.stdout


def test_check_deploy_passes_with_the_documented_production_settings():
    env = production_env(
        SECRET_KEY="x7#k2!vq9@m4$z8&w1^p6*r3(t5)y0_u-i=o+a[s]d{f}g|h;j:l,b.n<c>e?",
        ALLOWED_HOSTS="billing.example.com",
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
