"""Secrets never reach a log line, a traceback or a message shown to a person."""

import io
import logging
import sys

import pytest

from billing.redaction import RedactingFormatter, RedactSecretsFilter, redact


@pytest.fixture(autouse=True)
def no_configured_secrets(settings):
    settings.STRIPE_API_KEY = None
    settings.STRIPE_WEBHOOK_SECRET = None
    settings.OPENMETER_API_TOKEN = None


@pytest.mark.parametrize(
    "token",
    ["om_abc.def-ghi", "eyJhbGciOi.eyJzdWIi.sig+/=", "abc+def/ghi==", "x"],
)
def test_bearer_tokens_of_any_shape_are_masked(token):
    text = redact(f"401 from OpenMeter; sent Authorization: Bearer {token} to it")
    assert token not in text
    assert "Authorization: Bearer [redacted] to it" in text
    assert redact(f"bearer {token}") == "bearer [redacted]"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgres://meter:s3cr%40t!@db.internal:5432/billing", "postgres://meter:[redacted]@"),
        ("redis://:hunter2@cache:6379/0", "redis://:[redacted]@cache:6379/0"),
        ("rediss://default:p4ss@cache.example.com", "rediss://default:[redacted]@cache"),
        ("postgresql+psycopg://u:pw@h/d", "postgresql+psycopg://u:[redacted]@h/d"),
    ],
)
def test_passwords_in_urls_are_masked(url, shown):
    text = redact(f"could not connect to {url}: refused")
    assert shown in text
    password = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert password not in text


def test_urls_without_a_password_are_left_alone():
    for text in (
        "https://api.stripe.com/v1/billing/meter_events",
        "postgres://meter@db/billing",
        "http://127.0.0.1:8000/admin/",
    ):
        assert redact(text) == text


def test_session_tokens_and_keys_with_base64_characters_are_masked():
    token = "ek_test_YWNjdF8xTmp+Zk/lQ2tZ=="
    assert redact(f"token {token} expired") == "token [redacted] expired"
    assert "abc" not in redact("whsec_abc+def/ghi=")
    assert redact("sk_live_51Habcdefghijkl") == "[redacted]"


def test_each_of_several_webhook_secrets_is_masked(settings):
    settings.STRIPE_WEBHOOK_SECRET = "first-secret-1,second-secret-2"
    assert redact("got second-secret-2 and first-secret-1") == "got [redacted] and [redacted]"


def records(handler_formatter: logging.Formatter | None) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecretsFilter())
    if handler_formatter is not None:
        handler.setFormatter(handler_formatter)
    logger = logging.getLogger(f"test_redaction.{id(stream)}")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    return logger, stream


@pytest.mark.parametrize("formatter", [None, RedactingFormatter()], ids=["plain", "redacting"])
def test_tracebacks_and_stacks_are_redacted(formatter):
    logger, stream = records(formatter)
    try:
        raise RuntimeError("cannot reach redis://:hunter2@cache with Bearer tok.en+/=")
    except RuntimeError:
        logger.exception("Report run %s crashed (key %s)", 7, "sk_test_abcdefghij")
    logger.info("where Bearer zzz was seen", stack_info=True)
    output = stream.getvalue()
    assert "Traceback (most recent call last)" in output
    assert "Report run 7 crashed (key [redacted])" in output
    for secret in ("hunter2", "tok.en", "sk_test_abcdefghij", "zzz"):
        assert secret not in output
    assert "Stack (most recent call last)" in output


def test_the_formatter_alone_redacts_what_no_filter_saw():
    formatter = RedactingFormatter("%(levelname)s %(message)s")
    try:
        raise ValueError("postgres://u:topsecret@db/x")
    except ValueError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "Bearer %s", ("abc",), sys.exc_info()
        )
    text = formatter.format(record)
    assert "topsecret" not in text and "abc" not in text
    assert text.startswith("ERROR Bearer [redacted]")


def test_the_settings_logging_uses_both():
    from django.conf import settings

    config = settings.LOGGING
    assert config["handlers"]["console"]["filters"] == ["redact"]
    formatter = config["formatters"][config["handlers"]["console"]["formatter"]]
    assert formatter["class"] == "billing.redaction.RedactingFormatter"
