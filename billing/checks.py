"""Refuse to serve with DEBUG off unless the production settings are set.

A deployment check (`check --deploy`) and a hard stop in the WSGI/ASGI entry points; offline
commands (makemigrations, migrate) still load without secrets. runserver refuses by itself without
ALLOWED_HOSTS, and the worker cannot sign a task without SECRET_KEY.
"""

from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

MESSAGE = "With DEBUG off, SECRET_KEY and ALLOWED_HOSTS must be set in the environment."


def missing_production_settings() -> list[str]:
    if settings.DEBUG:
        return []
    try:
        secret_key = settings.SECRET_KEY
    except ImproperlyConfigured:  # Django refuses to hand out an empty key
        secret_key = ""
    return [
        name
        for name, value in (("SECRET_KEY", secret_key), ("ALLOWED_HOSTS", settings.ALLOWED_HOSTS))
        if not value
    ]


@checks.register(checks.Tags.security, deploy=True)
def production_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    missing = missing_production_settings()
    if not missing:
        return []
    return [
        checks.Error(
            MESSAGE,
            hint=f"Missing: {', '.join(missing)}. For local work set DEBUG=true instead.",
            id="meterbridge.E001",
        )
    ]


def ensure_production_settings() -> None:
    """For the WSGI/ASGI entry points, which run no system checks."""
    missing = missing_production_settings()
    if missing:
        raise ImproperlyConfigured(f"{MESSAGE} Missing: {', '.join(missing)}.")
