"""Keep secrets out of logs, error columns and admin pages."""

import logging
import re

from django.conf import settings

# Stripe keys and tokens look like sk_live_..., rk_test_..., whsec_..., and v2 session tokens.
_SECRET_PATTERN = re.compile(r"\b(?:sk|rk|pk|whsec)_[A-Za-z0-9_]{6,}|\bek_[A-Za-z0-9_]{10,}")


def redact(text: str) -> str:
    """Return `text` with every configured secret and anything shaped like a Stripe key masked."""
    for secret in (
        getattr(settings, "STRIPE_API_KEY", None),
        getattr(settings, "STRIPE_WEBHOOK_SECRET", None),
        getattr(settings, "OPENMETER_API_TOKEN", None),
    ):
        if secret and len(secret) >= 6:
            text = text.replace(secret, "[redacted]")
    return _SECRET_PATTERN.sub("[redacted]", text)


class RedactSecretsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
