"""Reading back what Stripe bills, read-only for everyone: reconciliations (their windows, totals
in quantity and money, CSV, "Report drifting windows again…"), Stripe's asynchronous meter event
rejections, and the webhook events received."""

from collections import defaultdict
from decimal import Decimal
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from billing.admin.base import ReadOnlyAdmin, RereportPermissionMixin
from billing.admin.views import action_fields, rereport_page
from billing.csv_export import reconciliation_download
from billing.formatting import utc_minute
from billing.models import (
    ItemKind,
    MeterEventError,
    Reconciliation,
    ReconciliationItem,
    WebhookEvent,
)
from billing.pricing import Amounts, PriceBook
from billing.reconcile.heal import drift_rereport

ITEMS_SHOWN = 200  # a reconciliation's page lists its first windows; the CSV has them all


def meter_totals(check: Reconciliation) -> list[dict[str, Any]]:
    """Per meter: counts by kind, and for drift and unsent windows what Stripe would bill more
    (OpenMeter's value minus Stripe's), in quantity and money."""
    quantity: dict[tuple[int, str], Decimal] = defaultdict(Decimal)
    per_customer: dict[tuple[int, int, str], Decimal] = defaultdict(Decimal)
    items = check.items.exclude(kind=ItemKind.SETTLING).values_list(
        "meter_id", "meter__openmeter_slug", "customer_id", "openmeter_value", "stripe_value"
    )
    for meter_id, slug, customer_id, om, stripe in items.iterator(chunk_size=5000):
        delta = om - (stripe or 0)
        quantity[(meter_id, slug)] += delta
        per_customer[(meter_id, customer_id, slug)] += delta
    prices = PriceBook.load(customer_ids={c for _, c, _ in per_customer})
    value: dict[str, Amounts] = defaultdict(Amounts)
    for (meter_id, customer_id, slug), delta in per_customer.items():
        value[slug] += prices.value(quantity=delta, meter_id=meter_id, customer_id=customer_id)
    deltas = {slug: q for (_, slug), q in quantity.items()}
    return [
        {
            "slug": slug,
            **{k: counts.get(k, 0) for k in ("compared", "match", "unsent", "drift", "settling")},
            "quantity": deltas.get(slug, Decimal(0)),
            "value": value.get(slug, Amounts()),
        }
        for slug, counts in sorted((check.meter_counts or {}).items())
    ]


@admin.register(Reconciliation)
class ReconciliationAdmin(RereportPermissionMixin, ReadOnlyAdmin):
    list_display = ["number", "started", "trigger", "period", "status_badge", "counters"]
    list_filter = ["status", "trigger"]
    actions = ["report_drift_again"]
    rereport_actions = ("report_drift_again",)
    fields = readonly_fields = (
        "trigger",
        "requested_by",
        "mode",
        "period_start",
        "period_end",
        "meter_slugs",
        "customer_subjects",
        "started_at",
        "finished_at",
    )

    @admin.display(description="Reconciliation", ordering="id")
    def number(self, obj: Reconciliation) -> str:
        return f"#{obj.pk}"

    @admin.display(description="Started (UTC)", ordering="started_at")
    def started(self, obj: Reconciliation) -> str:
        return utc_minute(obj.started_at)

    @admin.display(description="Windows (UTC)", ordering="period_start")
    def period(self, obj: Reconciliation) -> str:
        return f"{utc_minute(obj.period_start)} → {utc_minute(obj.period_end)}"

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: Reconciliation) -> str:
        return format_html(
            '<strong class="mb-status mb-status-{}">{}</strong>',
            obj.status,
            obj.get_status_display(),
        )

    @admin.display(description="Windows compared")
    def counters(self, obj: Reconciliation) -> str:
        return format_html(
            '{} compared: {} match, {} unsent, <span class="{}">{} drift</span>, {} settling',
            obj.windows_compared,
            obj.matched,
            obj.unsent,
            "mb-failed" if obj.drift else "",
            obj.drift,
            obj.settling,
        )

    @admin.action(description="Report drifting windows again…", permissions=["rereport"])
    def report_drift_again(
        self, request: HttpRequest, queryset: QuerySet[Reconciliation]
    ) -> HttpResponse | None:
        checks = list(queryset[:2])
        if len(checks) != 1:
            self.message_user(request, "Select one reconciliation.", messages.WARNING)
            return None
        selection, period = drift_rereport(reconciliation=checks[0])
        if period is None:
            self.message_user(request, "Nothing drifts in that reconciliation.", messages.INFO)
            return None
        selection.initial = {
            "preset": "custom",
            "start": period[0],
            "end": period[1],
            "reason": f"Drift found by reconciliation #{checks[0].pk}",
        }
        return rereport_page(
            self,
            request,
            selection=selection,
            post_url=request.get_full_path(),
            hidden=action_fields(request, action="report_drift_again"),
        )

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("<int:object_id>/items.csv", view(self.items_csv), name="billing_reconcile_csv"),
            path("<int:object_id>/progress/", view(self.progress), name="billing_reconcile_prog"),
            *super().get_urls(),
        ]

    def items_csv(self, request: HttpRequest, object_id: int) -> HttpResponseBase:
        if not self.has_view_permission(request):
            raise PermissionDenied
        check = get_object_or_404(Reconciliation, pk=object_id)
        items = ReconciliationItem.objects.filter(reconciliation=check).order_by(
            "meter_id", "customer_id", "window_start"
        )
        return reconciliation_download(items)

    def progress(self, request: HttpRequest, object_id: int) -> JsonResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        check = get_object_or_404(Reconciliation, pk=object_id)
        fields = ("windows_compared", "matched", "unsent", "drift", "settling", "stripe_requests")
        return JsonResponse(
            {
                "status": check.status,
                "running": check.finished_at is None,
                **{name: getattr(check, name) for name in fields},
            }
        )

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        check = self.get_object(request, unquote(object_id))
        if check is not None:
            items = check.items.select_related("meter", "customer").order_by(
                "meter_id", "customer_id", "window_start"
            )
            extra_context = {
                **(extra_context or {}),
                "totals": meter_totals(check),
                "items": items[:ITEMS_SHOWN],
                "item_count": check.items.count(),
                "csv_url": reverse("admin:billing_reconcile_csv", args=[check.pk]),
                "can_rereport": self.has_rereport_permission(request) and check.drift > 0,
            }
        return super().change_view(request, object_id, form_url, extra_context)


@admin.register(MeterEventError)
class MeterEventErrorAdmin(ReadOnlyAdmin):
    list_display = ["received", "meter", "code", "count", "message", "log_link"]
    list_filter = ["code", "meter"]
    list_select_related = ["meter", "report_log", "webhook_event"]
    search_fields = ["identifier", "message"]

    @admin.display(description="Received (UTC)", ordering="created_at")
    def received(self, obj: MeterEventError) -> str:
        return utc_minute(obj.created_at)

    @admin.display(description="Sent as")
    def log_link(self, obj: MeterEventError) -> str:
        if obj.report_log_id is None:
            return obj.identifier or "—"
        url = reverse("admin:billing_reportlog_change", args=[obj.report_log_id])
        return format_html('<a href="{}">log #{}</a>', url, obj.report_log_id)


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyAdmin):
    list_display = ["stripe_event_id", "type", "api_mode", "received_at", "processed_at", "error"]
    list_filter = ["type", "api_mode"]
    search_fields = ["stripe_event_id"]
    date_hierarchy = "received_at"
