"""The admin's login guard rails: django-axes' lockout, the optional TOTP second factor, and the
proxy header trusted only when configured."""

import os
import re
import subprocess
from base64 import b32decode
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from tests.helpers import setting_in_subprocess

LOGIN = "/admin/login/"
PASSWORD = "pw-12345-xyz"

pytestmark = pytest.mark.django_db


@pytest.fixture
def finance() -> Any:
    return get_user_model().objects.create_superuser("finance", "f@example.com", PASSWORD)


def log_in(
    client: Client, username: str = "finance", password: str = PASSWORD, **extra: str
) -> Any:
    data = {"username": username, "password": password, "next": "/admin/billing/", **extra}
    return client.post(LOGIN, data)


def text(response: Any) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", response.content.decode()).split())


def logged_in(response: Any) -> bool:
    return response.status_code == 302 and response["Location"] == "/admin/billing/"


# --- django-axes ------------------------------------------------------------------------------


def test_five_wrong_passwords_lock_the_account_until_axes_reset_username(client, finance):
    for _ in range(4):
        assert log_in(client, password="wrong").status_code == 200  # the form, with its error
    fifth = log_in(client, password="wrong")
    assert fifth.status_code == 429
    right = log_in(client)
    assert right.status_code == 429
    assert (
        "Too many failed logins for this account. Try again in 1 hour, or ask an administrator "
        "to run python manage.py axes_reset_username finance ." in text(right)
    )
    assert "_auth_user_id" not in client.session

    call_command("axes_reset_username", "finance", stdout=StringIO())
    assert logged_in(log_in(client))
    assert client.get("/admin/billing/").status_code == 200


def test_the_lockout_is_per_username_and_address_and_a_success_clears_the_count(client, finance):
    get_user_model().objects.create_superuser("other", "o@example.com", PASSWORD)
    for _ in range(5):
        log_in(client, password="wrong")
    assert log_in(client).status_code == 429
    assert logged_in(log_in(client, "other"))  # the same address, another account
    elsewhere = Client(REMOTE_ADDR="192.0.2.7")
    assert logged_in(log_in(elsewhere))  # the same account, another address

    fresh = Client(REMOTE_ADDR="192.0.2.8")
    for _ in range(4):
        log_in(fresh, "other", "wrong")
    assert logged_in(log_in(fresh, "other"))  # AXES_RESET_ON_SUCCESS
    fresh.logout()
    for _ in range(4):
        log_in(fresh, "other", "wrong")
    assert logged_in(log_in(fresh, "other"))


def test_the_lockout_page_without_cool_off_only_names_the_reset_command(client, finance, settings):
    settings.AXES_COOLOFF_TIME = None
    for _ in range(5):
        log_in(client, password="wrong")
    page = text(log_in(client))
    assert "Try again" not in page
    assert "Ask an administrator to run python manage.py axes_reset_username finance" in page


# --- TOTP second factor -----------------------------------------------------------------------


def enroll(username: str = "finance") -> tuple[str, str]:
    out = StringIO()
    call_command("enroll_totp", username, stdout=out)
    url = re.search(r"otpauth://\S+", out.getvalue())
    secret = re.search(r"Secret: ([A-Z2-7=]+)", out.getvalue())
    assert url and secret, out.getvalue()
    return url.group(0), secret.group(1)


def code(secret: str, drift: int = 0) -> str:
    return f"{totp(b32decode(secret), drift=drift):06d}"


@pytest.fixture
def two_factor(settings: Any) -> None:
    settings.ADMIN_REQUIRE_2FA = True


def test_with_2fa_off_a_password_is_enough(client, finance):
    page = client.get(LOGIN)
    assert "otp_token" not in page.content.decode()
    assert logged_in(log_in(client))
    assert client.get("/admin/billing/").status_code == 200


def test_with_2fa_on_a_password_session_is_not_admin(client, finance, two_factor):
    client.force_login(finance)
    response = client.get("/admin/billing/")
    assert response.status_code == 302
    assert response["Location"].startswith(f"{LOGIN}?next=/admin/billing/")
    assert "otp_token" in client.get(LOGIN).content.decode()


def test_with_2fa_on_password_and_code_log_in(client, finance, two_factor):
    url, secret = enroll()
    assert url.startswith("otpauth://totp/Meterbridge%3Afinance?secret=")
    assert f"secret={secret}" in url

    assert log_in(client).status_code == 200  # no code: asked for one
    assert "_auth_user_id" not in client.session
    wrong = log_in(client, otp_token=code(secret, drift=-20))
    assert wrong.status_code == 200 and "Invalid token" in text(wrong)
    assert "_auth_user_id" not in client.session
    # django-otp throttles the device after a wrong code: even the right one waits a moment.
    throttled = log_in(client, otp_token=code(secret))
    assert "Verification temporarily disabled" in text(throttled)
    TOTPDevice.objects.get(user__username="finance").throttle_reset()

    assert logged_in(log_in(client, otp_token=code(secret)))
    assert client.get("/admin/billing/").status_code == 200


def test_with_2fa_on_a_user_without_a_device_is_told_how_to_enrol(client, finance, two_factor):
    page = text(log_in(client, otp_token="123456"))
    assert "ask an administrator to run python manage.py enroll_totp finance" in page
    assert "_auth_user_id" not in client.session


def test_enroll_totp_refuses_unknown_users_and_replaces_only_when_asked(finance):
    with pytest.raises(CommandError, match="No user 'nobody'"):
        call_command("enroll_totp", "nobody", stdout=StringIO())
    _, first = enroll()
    with pytest.raises(CommandError, match="--replace"):
        enroll()
    call_command("enroll_totp", "finance", "--replace", stdout=StringIO())
    device = TOTPDevice.objects.get(user=finance)
    assert device.confirmed and device.name == "authenticator"
    assert device.key != b32decode(first).hex()


# --- SECURE_PROXY_SSL_HEADER ------------------------------------------------------------------


def production_setting(name: str, **env: str) -> Any:
    """A setting as project.settings builds it in production from the given environment."""
    base = {k: v for k, v in os.environ.items() if k != "SECURE_PROXY_SSL_HEADER"}
    base.update(DEBUG="false", SECRET_KEY="x" * 50, ALLOWED_HOSTS="billing.example.com")
    return setting_in_subprocess(name, {**base, **env})


def test_the_proxy_ssl_header_is_trusted_only_when_configured():
    assert production_setting("SECURE_PROXY_SSL_HEADER") is None
    assert production_setting(
        "SECURE_PROXY_SSL_HEADER", SECURE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO,https"
    ) == ["HTTP_X_FORWARDED_PROTO", "https"]
    with pytest.raises(subprocess.CalledProcessError) as bad:
        production_setting("SECURE_PROXY_SSL_HEADER", SECURE_PROXY_SSL_HEADER="https")
    assert "SECURE_PROXY_SSL_HEADER must be 'HEADER,value'" in bad.value.stderr
