"""The admin's login guard rails: the optional TOTP second factor and django-axes' lockout page.

ADMIN_REQUIRE_2FA is read on every request, not at import, so turning it on (or a test's
settings override) takes effect without another admin site or URL configuration.
"""

from datetime import timedelta
from typing import Any

from axes.helpers import get_client_username, get_cool_off
from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django_otp import devices_for_user
from django_otp.admin import OTPAdminAuthenticationForm, _admin_template_for_django_version

RESET_COMMAND = "python manage.py axes_reset_username"
ENROLL_COMMAND = "python manage.py enroll_totp"


class OTPLoginForm(OTPAdminAuthenticationForm):  # type: ignore[misc]
    """django-otp's admin login form (username, password, token); with one device, no choice.

    django-otp asks which device to check the token against, even when there is only one: the
    usual case here (`manage.py enroll_totp` gives each user one), so that one is taken.
    """

    def _chosen_device(self, user: Any) -> Any:
        if self.cleaned_data.get("otp_device"):
            return super()._chosen_device(user)
        devices = list(devices_for_user(user, confirmed=True, for_verify=True))
        if not devices:
            raise forms.ValidationError(
                "This account has no authenticator set up yet: ask an administrator to run "
                f"{ENROLL_COMMAND} {user.get_username()}",
                code="no_device",
            )
        return devices[0] if len(devices) == 1 else None


class MeterbridgeAdminSite(admin.AdminSite):
    """Django's admin site, named Meterbridge, with the finance dashboard as its home page
    (billing.admin.dashboard) and, in demo mode, a banner on every page.

    With ADMIN_REQUIRE_2FA on it works as django-otp's OTPAdminSite: a staff user counts as
    staff only once an OTP device of theirs has verified this session (request.user.is_verified(),
    set by OTPMiddleware), and the login form asks for the 6-digit code as well.
    """

    site_header = site_title = "Meterbridge"
    index_title = "Dashboard"
    index_template = "admin/billing/dashboard.html"

    def each_context(self, request: HttpRequest) -> dict[str, Any]:
        context = super().each_context(request)
        context["demo_mode"] = settings.DEMO_MODE
        context["demo_stripe_page"] = settings.STRIPE_API_BASE.rstrip("/") + "/"
        return context

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        from billing.admin.dashboard import dashboard_context  # the admin registry loads late

        context = {**(extra_context or {}), **dashboard_context(request)}
        return super().index(request, extra_context=context)

    def get_urls(self) -> list[Any]:
        from billing.admin.dashboard import dashboard_urls

        return [*dashboard_urls(self), *super().get_urls()]

    @property
    def login_form(self) -> type[AuthenticationForm] | None:
        return OTPLoginForm if settings.ADMIN_REQUIRE_2FA else None

    @login_form.setter
    def login_form(self, value: type[AuthenticationForm] | None) -> None:
        raise AttributeError("the login form follows settings.ADMIN_REQUIRE_2FA")

    @property
    def login_template(self) -> str | None:
        return _admin_template_for_django_version() if settings.ADMIN_REQUIRE_2FA else None

    @login_template.setter
    def login_template(self, value: str | None) -> None:
        raise AttributeError("the login template follows settings.ADMIN_REQUIRE_2FA")

    def has_permission(self, request: HttpRequest) -> bool:
        if not super().has_permission(request):
            return False
        if not settings.ADMIN_REQUIRE_2FA:
            return True
        is_verified = getattr(request.user, "is_verified", None)
        return bool(is_verified and is_verified())


def describe(delta: timedelta) -> str:
    """'1 hour', '90 minutes' → '1 hour 30 minutes', for the lockout page."""
    minutes = max(1, round(delta.total_seconds() / 60))
    hours, minutes = divmod(minutes, 60)
    parts = [f"{hours} hour{'s' * (hours != 1)}"] if hours else []
    if minutes:
        parts.append(f"{minutes} minute{'s' * (minutes != 1)}")
    return " ".join(parts)


def lockout_response(
    request: HttpRequest,
    original_response: HttpResponse | None = None,
    credentials: dict[str, Any] | None = None,
) -> HttpResponse:
    """django-axes' AXES_LOCKOUT_CALLABLE: says how long the lock lasts and how to lift it."""
    cool_off = get_cool_off(request)
    context = {
        **admin.site.each_context(request),
        "title": "Login locked",
        "username": get_client_username(request, credentials) or "<user>",
        "cool_off": describe(cool_off) if cool_off else "",
        "reset_command": RESET_COMMAND,
    }
    return render(
        request,
        "billing/login_locked_out.html",
        context,
        status=settings.AXES_HTTP_RESPONSE_CODE,
    )
