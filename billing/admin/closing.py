"""Billing periods (read-only: Stripe's cycle as its webhooks tell it) and corrections: usage that
changed after an invoice was final, approved or rejected with a reason by someone holding
`billing.approve_correction`, then booked in Stripe."""

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.html import format_html

from billing import windows
from billing.admin.base import ReadOnlyAdmin
from billing.closing.corrections import CorrectionRefused, book, decide
from billing.formatting import money, signed_quantity, utc_minute
from billing.models import BillingPeriod, Correction, CorrectionStatus

APPROVE_PERMISSION = "billing.approve_correction"


@admin.register(BillingPeriod)
class BillingPeriodAdmin(ReadOnlyAdmin):
    """Read-only; deleted with their subscription's row (by whoever may delete that: a period is
    a copy of Stripe's, and one with corrections is protected by them)."""

    list_display = ["subscription", "period", "status", "invoice", "total", "boundary"]
    list_filter = ["status"]
    list_select_related = ["subscription", "subscription__customer"]
    search_fields = ["subscription__customer__name", "stripe_invoice_id"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("billing.delete_billingperiod")

    @admin.display(description="Period (UTC)", ordering="period_start")
    def period(self, obj: BillingPeriod) -> str:
        return f"{utc_minute(obj.period_start)} → {utc_minute(obj.period_end)}"

    @admin.display(description="Invoice")
    def invoice(self, obj: BillingPeriod) -> str:
        if not obj.stripe_invoice_id:
            return "—"
        return f"{obj.stripe_invoice_id} ({obj.invoice_status})"

    @admin.display(description="Invoice total")
    def total(self, obj: BillingPeriod) -> str:
        if obj.invoice_total is None:
            return "—"
        return money(minor_units=Decimal(obj.invoice_total), currency=obj.invoice_currency or "usd")

    @admin.display(description="Hourly window at the start")
    def boundary(self, obj: BillingPeriod) -> str:
        """A period that does not start on the hour splits an hourly window: Stripe bills that
        window in the period its start (the event's timestamp) falls in, the earlier one."""
        start = obj.period_start
        if windows.is_aligned(start, windows.HOUR):
            return "on the hour"
        window = windows.floor(start, windows.HOUR)
        return format_html(
            '<span class="mb-warn-text">{} to {} is billed in the previous period</span>',
            utc_minute(window),
            f"{window + windows.length(windows.HOUR):%H:%M}",
        )


class DecisionForm(forms.Form):
    reason = forms.CharField(
        label="Reason",
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 80}),
        help_text="Kept on the correction and in its history.",
    )


@admin.register(Correction)
class CorrectionAdmin(ReadOnlyAdmin):
    list_display = [
        "number",
        "customer",
        "meter",
        "billing_period",
        "change",
        "value",
        "status",
        "decided",
    ]
    list_filter = ["status", "meter"]
    list_select_related = ["customer", "meter", "billing_period", "decided_by"]
    actions = ["approve", "reject", "book_again"]

    @admin.display(description="Correction", ordering="id")
    def number(self, obj: Correction) -> str:
        return f"#{obj.pk}"

    @admin.display(description="Quantity billed → measured")
    def change(self, obj: Correction) -> str:
        return (
            f"{obj.quantity_before.normalize():f} → {obj.quantity_after.normalize():f} "
            f"({signed_quantity(obj.quantity)})"
        )

    @admin.display(description="Amount")
    def value(self, obj: Correction) -> str:
        shown = money(minor_units=obj.amount, currency=obj.currency)
        return f"+{shown}" if obj.amount > 0 else shown

    @admin.display(description="Decided")
    def decided(self, obj: Correction) -> str:
        if obj.decided_by is None:
            return "—"
        text = f"{obj.get_status_display()} by {obj.decided_by} ({utc_minute(obj.decided_at)})"
        return format_html("{}<br><small>{}</small>", text, obj.reason)

    def has_approve_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(APPROVE_PERMISSION)

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        # Posting a decision without the permission is refused outright, not "no action".
        if request.method == "POST" and request.POST.get("action") in self.actions:
            if not self.has_approve_permission(request):
                raise PermissionDenied
        return super().changelist_view(request, extra_context)

    @admin.action(description="Approve and book in Stripe…", permissions=["approve"])
    def approve(self, request: HttpRequest, queryset: QuerySet[Correction]) -> Any:
        return self._decide(request, queryset, approve=True)

    @admin.action(description="Reject…", permissions=["approve"])
    def reject(self, request: HttpRequest, queryset: QuerySet[Correction]) -> Any:
        return self._decide(request, queryset, approve=False)

    @admin.action(description="Book again (after a failure)", permissions=["approve"])
    def book_again(self, request: HttpRequest, queryset: QuerySet[Correction]) -> None:
        for correction in queryset.filter(status=CorrectionStatus.FAILED):
            booked = book(correction=correction)
            self.log_change(request, booked, f"Booking retried: {booked.get_status_display()}.")
            self.message_user(request, f"{booked}: {booked.error or 'booked'}.")

    def _decide(
        self, request: HttpRequest, queryset: QuerySet[Correction], *, approve: bool
    ) -> Any:
        form = DecisionForm(request.POST if "confirm" in request.POST else None)
        if not form.is_valid():
            return TemplateResponse(
                request,
                "admin/billing/correction/decide.html",
                {
                    **self.admin_site.each_context(request),
                    "title": "Approve corrections" if approve else "Reject corrections",
                    "opts": self.model._meta,
                    "corrections": list(queryset),
                    "form": form,
                    "action": "approve" if approve else "reject",
                    "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
                },
            )
        for correction in queryset:
            try:
                decided = decide(
                    correction=correction,
                    user=request.user,
                    approve=approve,
                    reason=form.cleaned_data["reason"],
                )
            except CorrectionRefused as exc:
                self.message_user(request, f"{correction}: {exc}", messages.ERROR)
                continue
            status = decided.get_status_display()
            self.log_change(request, decided, f"{status}: {decided.reason}")
            level = (
                messages.ERROR if decided.status == CorrectionStatus.FAILED else messages.SUCCESS
            )
            extra = f" ({decided.stripe_object_id})" if decided.stripe_object_id else ""
            self.message_user(request, f"{decided}: {status}{extra}. {decided.error}", level)
        return None
