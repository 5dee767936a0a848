"""The admin's home page: the finance dashboard (billing.dashboard), and its one action,
creating customers for unmapped subjects (needs "Can add customer")."""

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from django.views.decorators.http import require_POST

from billing import dashboard
from billing.admin.subjects import MOVE_PERMISSIONS
from billing.models import Customer
from billing.onboarding import create_customers

ADD_CUSTOMER = "billing.add_customer"


def dashboard_context(request: HttpRequest) -> dict[str, Any]:
    return {
        "dashboard": dashboard.build(),
        "can_create_customers": request.user.has_perm(ADD_CUSTOMER),
        "can_move_subjects": request.user.has_perms(MOVE_PERMISSIONS),
    }


def dashboard_urls(site: admin.AdminSite) -> list[URLPattern]:
    @require_POST
    def create(request: HttpRequest) -> HttpResponse:
        return create_customers_view(request, site=site)

    return [
        path(
            "dashboard/create-customers/",
            site.admin_view(create),
            name="billing_create_customers",
        )
    ]


def create_customers_view(request: HttpRequest, *, site: admin.AdminSite) -> HttpResponse:
    if not request.user.has_perm(ADD_CUSTOMER):
        raise PermissionDenied
    subjects = request.POST.getlist("subject")
    if not subjects:
        messages.warning(request, "Tick the subjects to create customers for.")
    customer_admin = site._registry[Customer]
    for outcome in create_customers(subjects=subjects):
        if outcome.customer is not None:
            customer_admin.log_addition(
                request, outcome.customer, f"Created for unmapped subject {outcome.subject}."
            )
        level = messages.SUCCESS if outcome.synced else messages.WARNING
        messages.add_message(request, level, f"{outcome.subject}: {outcome.message}.")
    return HttpResponseRedirect(reverse("admin:index") + "#unmapped")
