"""Keep secrets out of logs, error columns and admin pages."""

import logging
import re
from typing import Any

from django.conf import settings

# Stripe keys and tokens look like sk_live_..., rk_test_..., whsec_..., and v2 meter event
# session tokens ek_... (base64-like: + / = may appear).
_SECRET_PATTERN = re.compile(
    r"\b(?:sk|rk|pk)_[A-Za-z0-9_]{6,}|\bwhsec_[A-Za-z0-9_+/=]{6,}|\bek_[A-Za-z0-9_+/=-]{10,}"
)
# `Authorization: Bearer <token>` as headers and error messages quote it (any token68 chars).
_BEARER_PATTERN = re.compile(r"\b(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
# The password of a URL's user info: postgres://user:pass@host, redis://:pass@host.
_URL_PASSWORD_PATTERN = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*:)[^\s/?#@]+@")
MASK = "[redacted]"


def _configured_secrets() -> list[str]:
    found = []
    for name in ("STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET", "OPENMETER_API_TOKEN"):
        value = getattr(settings, name, None)
        if value:
            found.append(str(value))
            found.extend(part.strip() for part in str(value).split(","))  # one per endpoint
    return sorted({s for s in found if len(s) >= 6}, key=len, reverse=True)


def redact(text: str) -> str:
    """Return `text` with every configured secret and anything shaped like a Stripe key, a
    bearer token or a URL's password masked."""
    for secret in _configured_secrets():
        text = text.replace(secret, MASK)
    text = _URL_PASSWORD_PATTERN.sub(rf"\1{MASK}@", text)
    text = _BEARER_PATTERN.sub(rf"\1{MASK}", text)
    return _SECRET_PATTERN.sub(MASK, text)


class RedactSecretsFilter(logging.Filter):
    """Masks secrets in a record's message, traceback and stack before any handler formats it.

    logger.exception() keeps the traceback outside getMessage(): it is formatted here (as
    logging.Formatter would, and cached in `exc_text`, which formatters reuse) and redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _PLAIN.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class RedactingFormatter(logging.Formatter):
    """A Formatter whose whole output (message, traceback, stack) is redacted: the last guard,
    for records that reached a handler without the filter."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))

    def formatException(self, ei: Any) -> str:  # logging's camelCase name
        return redact(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # logging's camelCase name
        return redact(super().formatStack(stack_info))


_PLAIN = logging.Formatter()
