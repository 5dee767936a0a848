"""The report log, read-only for everyone: capped counts, indexed search, "rejected by Stripe",
and the streamed CSV export."""

from functools import cached_property
from typing import Any, cast

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import HttpRequest, HttpResponseRedirect
from django.http.response import HttpResponseBase
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.text import Truncator

from billing.admin.base import ReadOnlyAdmin
from billing.admin.generic import Paginator
from billing.admin.history import REASON_SHOWN
from billing.csv_export import report_log_download
from billing.formatting import quantity, utc_minute
from billing.integrations.stripe_client import dashboard_url
from billing.models import Customer, LogStatus, MeterEventError, ReportLog


class CappedCountPaginator(Paginator):
    """Counts at most `cap` + 1 rows. A COUNT(*) over a million-row log on every page view is
    what makes such a changelist slow; past the cap, finance staff narrow the list instead."""

    cap = 10_000

    @cached_property
    def count(self) -> int:
        # Unordered: the count needs no sort of what it counts.
        return cast("QuerySet[Any]", self.object_list).order_by()[: self.cap + 1].count()

    @property
    def capped(self) -> bool:
        return self.count > self.cap


@admin.register(ReportLog)
class ReportLogAdmin(ReadOnlyAdmin):
    list_display = [
        "logged_at",
        "run_link",
        "meter_name",
        "customer_link",
        "window",
        "change",
        "status_text",
    ]  # the identifier is on each row's page, in the CSV, and searchable
    list_filter = ["status", "meter", "customer", ("created_at", admin.DateFieldListFilter)]
    list_select_related = ["meter", "customer", "run", "run__requested_by"]
    date_hierarchy = "created_at"
    # Searching is done by get_search_results, on indexed columns; this only shows the box.
    search_fields = ["identifier"]
    search_help_text = (
        "A customer (name, subject, email or Stripe id), a meter event identifier or a Stripe "
        "request id."
    )
    show_full_result_count = False
    paginator = CappedCountPaginator
    list_per_page = 100
    # Newest first by the indexed created_at (ids ascend with it): the index then both filters a
    # date range and yields the page in order. Sorting a million rows by another column would
    # not be fast, so only indexed columns are sortable.
    ordering = ["-created_at"]
    sortable_by = ["logged_at", "run_link"]
    fields = readonly_fields = (
        "run",
        "run_requested_by",
        "run_reason",
        "meter",
        "customer_link",
        "window_start",
        "window_end",
        "period_start",
        "previous_quantity",
        "quantity",
        "status",
        "identifier",
        "stripe_request_id",
        "error",
        "created_at",
    )

    @admin.display(description="Logged (UTC)", ordering="created_at")
    def logged_at(self, obj: ReportLog) -> str:
        return utc_minute(obj.created_at)

    @admin.display(description="Meter")
    def meter_name(self, obj: ReportLog) -> str:
        return obj.meter.name

    @admin.display(description="Run", ordering="run_id")
    def run_link(self, obj: ReportLog) -> str:
        """The run, who asked for it and why: the history says who, why and what."""
        run = obj.run
        link = format_html('<a href="?run__id__exact={}">#{}</a>', obj.run_id, obj.run_id)
        who = run.requested_by.get_username() if run.requested_by else run.get_trigger_display()
        if not run.reason:
            return format_html("{}<br><small>{}</small>", link, who)
        return format_html(
            '{}<br><small>{}: <span class="mb-reason" title="{}">“{}”</span></small>',
            link,
            who,
            run.reason,
            Truncator(run.reason).chars(REASON_SHOWN),
        )

    @admin.display(description="Requested by")
    def run_requested_by(self, obj: ReportLog) -> str:
        run = obj.run
        return str(run.requested_by) if run.requested_by else f"— ({run.get_trigger_display()})"

    @admin.display(description="Reason of the run")
    def run_reason(self, obj: ReportLog) -> str:
        return obj.run.reason or "—"

    @admin.display(description="Customer")
    def customer_link(self, obj: ReportLog) -> str:
        customer = obj.customer
        if not customer.stripe_id:
            return customer.name
        return format_html(
            '{} <small><a href="{}" target="_blank" rel="noopener" title="{} in the Stripe '
            'dashboard">Stripe&nbsp;↗</a></small>',
            customer.name,
            dashboard_url(f"customers/{customer.stripe_id}"),
            customer.stripe_id,
        )

    @admin.display(description="Window start (UTC)")
    def window(self, obj: ReportLog) -> str:
        shown = format_html(
            '<span class="mb-nowrap" title="until {}">{}</span>',
            utc_minute(obj.window_end),
            utc_minute(obj.window_start),
        )
        if obj.period_start is None:
            return shown
        return format_html(
            '{}<br><span class="mb-nowrap help">period from {}</span>',
            shown,
            utc_minute(obj.period_start),
        )

    @admin.display(description="Old → new value")
    def change(self, obj: ReportLog) -> str:
        return f"{quantity(obj.previous_quantity)} → {quantity(obj.quantity)}"

    def get_queryset(self, request: HttpRequest) -> QuerySet[ReportLog]:
        rejected = MeterEventError.objects.filter(report_log=OuterRef("pk"))
        logs: QuerySet[ReportLog] = super().get_queryset(request)
        return logs.annotate(rejected=Exists(rejected))

    @admin.display(description="Status")
    def status_text(self, obj: ReportLog) -> str:
        """The outcome, with what Stripe said: its request id, or the error."""
        if getattr(obj, "rejected", False):
            return format_html(
                '<strong class="mb-log-failed">Rejected by Stripe</strong><br><small>{}</small>',
                "; ".join(e.code for e in obj.rejections.all()),
            )
        if obj.status == LogStatus.FAILED:
            return format_html(
                '<strong class="mb-log-failed">Failed</strong><br><small>{}</small>', obj.error
            )
        if obj.stripe_request_id:
            return format_html(
                "{}<br><small><code>{}</code></small>",
                obj.get_status_display(),
                obj.stripe_request_id,
            )
        return obj.get_status_display()

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[ReportLog], search_term: str
    ) -> tuple[QuerySet[ReportLog], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        # Each alternative hits an index: no LIKE over a million log rows. The customers are
        # looked up first, so the database gets a list of ids rather than a subquery it would
        # answer with a scan of the whole log.
        customers = Customer.objects.filter(
            Q(name__icontains=term)
            | Q(openmeter_subject__icontains=term)
            | Q(subjects__subject=term)
            | Q(email__icontains=term)
            | Q(stripe_customer_id=term)
        ).values_list("pk", flat=True)
        matches = Q(identifier=term) | Q(stripe_request_id=term)
        matches |= Q(customer_id__in=list(customers))
        return queryset.filter(matches), False

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "export.csv",
                self.admin_site.admin_view(self.export_csv_view),
                name="billing_reportlog_export",
            ),
            *super().get_urls(),
        ]

    def export_csv_view(self, request: HttpRequest) -> HttpResponseBase:
        """The changelist as it is filtered, searched and ordered, as a streamed CSV file."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters:
            return HttpResponseRedirect(reverse("admin:billing_reportlog_changelist") + "?e=1")
        return report_log_download(changelist.queryset)
