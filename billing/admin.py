"""The Django admin: thin. Lists, filters and actions call the services."""

from datetime import timedelta
from functools import cached_property
from typing import Any, TypeVar, cast

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Model, Q, QuerySet
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from billing import charts, rereport, stripe_sync, windows
from billing.admin_views import action_fields, rereport_page
from billing.csv_export import report_log_csv
from billing.forms import MeterForm
from billing.models import (
    ArchivedPrice,
    Customer,
    LogStatus,
    Meter,
    PriceMapping,
    ReportLog,
    ReportRun,
    RunStatus,
    Subscription,
    SyncStatus,
)
from billing.stripe_client import dashboard_url, is_live_mode
from billing.templatetags.billing_admin import quantity, utc

M = TypeVar("M", bound=Model)

STATUS_COLOURS = {
    SyncStatus.SYNCED: "#2e7d32",
    SyncStatus.PENDING: "#8a6d00",
    SyncStatus.FAILED: "#c62828",
}


def stripe_link(object_id: str, path: str) -> str:
    if not object_id:
        return "—"
    mode = "live" if is_live_mode() else "test"
    return format_html(
        '<a href="{}" target="_blank" rel="noopener">{}</a> <small>({})</small>',
        dashboard_url(f"{path}/{object_id}"),
        object_id,
        mode,
    )


class StripeSyncedAdmin(admin.ModelAdmin):
    """Shows each row's Stripe state and reports the outcome of the sync that follows a save."""

    stripe_id_field = ""
    stripe_path = ""
    actions = ["sync_to_stripe"]
    list_filter = ["sync_status"]
    sync_readonly = ["sync_status", "sync_error", "synced_at", "created_at", "updated_at"]

    @admin.display(description="Stripe", ordering="sync_status")
    def stripe_status(self, obj: Any) -> str:
        colour = STATUS_COLOURS.get(obj.sync_status, "#555")
        title = obj.sync_error or ""
        return format_html(
            '<span style="color:{};font-weight:bold" title="{}">{}</span>',
            colour,
            title,
            obj.get_sync_status_display(),
        )

    @admin.display(description="Stripe id")
    def stripe_id(self, obj: Any) -> str:
        return stripe_link(getattr(obj, self.stripe_id_field), self.stripe_path)

    @admin.action(description="Sync to Stripe")
    def sync_to_stripe(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        ok = failed = 0
        for obj in queryset:
            if stripe_sync.sync_object(obj):
                ok += 1
            else:
                failed += 1
                self.message_user(request, f"{obj}: {obj.sync_error}", messages.WARNING)
        self.message_user(request, f"{ok} synced, {failed} failed.", messages.INFO)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        request._meterbridge_saved = obj  # type: ignore[attr-defined]
        warning = getattr(form, "openmeter_warning", "")
        if warning:
            self.message_user(request, warning, messages.WARNING)

    def changeform_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = super().changeform_view(request, *args, **kwargs)
        # The sync runs when the admin's transaction commits, i.e. by now: tell how it went.
        saved = getattr(request, "_meterbridge_saved", None)
        if saved is not None:
            saved.refresh_from_db()
            if saved.sync_status == SyncStatus.FAILED:
                self.message_user(
                    request,
                    f"Saved, but Stripe did not take it: {saved.sync_error} "
                    "It stays marked failed; use “Sync to Stripe” to retry.",
                    messages.WARNING,
                )
            elif saved.sync_status == SyncStatus.SYNCED:
                self.message_user(request, f"Synced to Stripe: {saved}.", messages.SUCCESS)
        return response


# --- re-reporting ---------------------------------------------------------------------------

REREPORT_PERMISSION = "billing.rereport_usage"


class RereportPermissionMixin(admin.ModelAdmin):
    """Re-report actions need billing.rereport_usage. Without it they are hidden, and posting to
    one anyway is a 403 (Django alone would quietly answer "No action selected")."""

    rereport_actions: tuple[str, ...] = ()

    def has_rereport_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(REREPORT_PERMISSION)

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        if (
            request.method == "POST"
            and request.POST.get("action") in self.rereport_actions
            and not self.has_rereport_permission(request)
        ):
            raise PermissionDenied
        return super().changelist_view(request, extra_context)


class RereportActionMixin(RereportPermissionMixin):
    """The "Re-report usage…" action on a changelist; `rereport_selection` says what rows mean."""

    rereport_actions = ("rereport_usage",)

    def rereport_selection(self, queryset: QuerySet[Any]) -> rereport.Selection:
        raise NotImplementedError

    @admin.action(description="Re-report usage…", permissions=["rereport"])
    def rereport_usage(self, request: HttpRequest, queryset: QuerySet[Any]) -> HttpResponse:
        return rereport_page(
            self,
            request,
            selection=self.rereport_selection(queryset),
            post_url=request.get_full_path(),
            hidden=action_fields(request, action="rereport_usage"),
        )


def _usage_charts(series: list[charts.DailyUsage]) -> list[dict[str, Any]]:
    return [
        {
            "meter": usage.meter,
            "total": usage.total,
            "svg": charts.bar_chart(
                usage, title=f"{usage.meter.name}: reported usage per UTC day, last 30 days"
            ),
        }
        for usage in series
    ]


def _get(model: type[M], object_id: str) -> M | None:
    """The row a change page is for, or None (Django then answers it does not exist)."""
    try:
        pk = int(unquote(object_id))
    except ValueError:
        return None
    return model._default_manager.filter(pk=pk).first()


@admin.register(Meter)
class MeterAdmin(RereportActionMixin, StripeSyncedAdmin):
    form = MeterForm
    stripe_id_field, stripe_path = "stripe_meter_id", "meters"
    list_display = [
        "name",
        "openmeter_slug",
        "event_name",
        "window",
        "active",
        "stripe_status",
        "stripe_id",
    ]
    list_filter = ["sync_status", "active", "window"]
    search_fields = ["name", "openmeter_slug", "event_name", "stripe_meter_id"]
    actions = ["sync_to_stripe", "rereport_usage"]

    def rereport_selection(self, queryset: QuerySet[Any]) -> rereport.Selection:
        return rereport.select_meters(meters=queryset)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        meter = _get(Meter, object_id)
        if meter is not None:
            usage = charts.meter_usage(meter=meter, today=windows.utcnow().date())
            extra_context = {**(extra_context or {}), "usage_charts": _usage_charts([usage])}
        return super().change_view(request, object_id, form_url, extra_context)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = ["stripe_meter_id", "openmeter_aggregation", *self.sync_readonly]
        if obj is not None and obj.stripe_meter_id:
            # Stripe cannot change these once the meter exists.
            fields += ["event_name", "window"]
        return fields


@admin.register(Customer)
class CustomerAdmin(RereportActionMixin, StripeSyncedAdmin):
    stripe_id_field, stripe_path = "stripe_customer_id", "customers"
    list_display = ["name", "email", "openmeter_subject", "active", "stripe_status", "stripe_id"]
    list_filter = ["sync_status", "active"]
    search_fields = ["name", "email", "openmeter_subject", "stripe_customer_id"]
    actions = ["sync_to_stripe", "rereport_usage"]

    def rereport_selection(self, queryset: QuerySet[Any]) -> rereport.Selection:
        return rereport.select_customers(customers=queryset)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        customer = _get(Customer, object_id)
        if customer is not None:
            series = charts.customer_usage(customer=customer, today=windows.utcnow().date())
            extra_context = {**(extra_context or {}), "usage_charts": _usage_charts(series)}
        return super().change_view(request, object_id, form_url, extra_context)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = list(self.sync_readonly)
        if obj is not None and obj.stripe_customer_id and obj.sync_status == SyncStatus.SYNCED:
            fields.append("stripe_customer_id")
        return fields


class ArchivedPriceInline(admin.TabularInline):
    model = ArchivedPrice
    fields = readonly_fields = (
        "stripe_price_id",
        "unit_amount_decimal",
        "currency",
        "replaced_by",
        "archived_at",
    )
    extra = 0
    can_delete = False
    verbose_name_plural = "Earlier Stripe prices (archived when the amount changed)"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(PriceMapping)
class PriceMappingAdmin(StripeSyncedAdmin):
    stripe_id_field, stripe_path = "stripe_price_id", "prices"
    list_display = [
        "product_name",
        "meter",
        "unit_amount_decimal",
        "currency",
        "interval",
        "active",
        "stripe_status",
        "stripe_id",
    ]
    list_filter = ["sync_status", "active", "currency", "meter"]
    search_fields = ["product_name", "stripe_product_id", "stripe_price_id", "meter__name"]
    list_select_related = ["meter"]
    inlines = [ArchivedPriceInline]
    exclude = ["stripe_price_amount", "stripe_price_currency", "stripe_price_interval"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = ["stripe_price_id", *self.sync_readonly]
        if obj is not None and obj.stripe_price_id:
            fields += ["meter", "stripe_product_id"]  # a price bills one meter for good
        return fields


@admin.register(Subscription)
class SubscriptionAdmin(StripeSyncedAdmin):
    stripe_id_field, stripe_path = "stripe_subscription_id", "subscriptions"
    list_display = [
        "__str__",
        "customer",
        "status",
        "on_archived_price",
        "stripe_status",
        "stripe_id",
    ]
    list_filter = ["sync_status", "status"]
    search_fields = ["customer__name", "customer__openmeter_subject", "stripe_subscription_id"]
    list_select_related = ["customer"]
    filter_horizontal = ["prices"]
    actions = ["sync_to_stripe", "cancel_in_stripe", "move_to_current_prices"]
    exclude = ["stripe_items", "cancel_requested"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = ["stripe_subscription_id", "status", *self.sync_readonly]
        if obj is not None and obj.stripe_subscription_id:
            fields.append("customer")
        return fields

    @admin.display(description="On an archived price", boolean=True)
    def on_archived_price(self, obj: Subscription) -> bool:
        return ArchivedPrice.objects.filter(stripe_price_id__in=list(obj.stripe_items)).exists()

    @admin.action(description="Cancel in Stripe")
    def cancel_in_stripe(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        for sub in queryset:
            Subscription.objects.filter(pk=sub.pk).update(cancel_requested=True)
            sub.cancel_requested = True
            if stripe_sync.sync_object(sub):
                self.message_user(request, f"{sub}: canceled in Stripe.", messages.SUCCESS)
            else:
                self.message_user(request, f"{sub}: {sub.sync_error}", messages.WARNING)

    @admin.action(description="Move to the current prices")
    def move_to_current_prices(
        self, request: HttpRequest, queryset: QuerySet[Subscription]
    ) -> None:
        for sub in queryset:
            try:
                moved = stripe_sync.move_to_current_prices(sub)
            except Exception as exc:
                self.message_user(
                    request, f"{sub}: {stripe_sync.error_message(exc)}", messages.WARNING
                )
            else:
                self.message_user(request, f"{sub}: {moved} item(s) moved to the current price.")


# --- the report history: read-only for everyone --------------------------------------------


class ReadOnlyAdmin(admin.ModelAdmin):
    """The audit trail: nobody adds, edits or deletes it here, superusers included."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


RUN_PAGE_LOGS = 50  # the run page lists its first rows; the report log has them all
DRY_RUN_NOTE = mark_safe("<br><small>dry run: nothing sent</small>")
RUN_STATUS_COLOURS = {
    RunStatus.RUNNING: "#1565c0",
    RunStatus.SUCCEEDED: "#2e7d32",
    RunStatus.PARTIAL: "#8a6d00",
    RunStatus.FAILED: "#c62828",
}


def duration_text(run: ReportRun) -> str:
    end = run.finished_at or timezone.now()
    seconds = max((end - run.started_at).total_seconds(), 0.0)
    text = f"{seconds:.1f} s" if seconds < 60 else str(timedelta(seconds=round(seconds)))
    return text if run.finished_at else f"{text} so far"


def run_progress(run: ReportRun) -> dict[str, Any]:
    """What the run page shows while the run works; its JavaScript polls this as JSON."""
    return {
        "status": run.status,
        "status_label": run.get_status_display(),
        "running": run.status == RunStatus.RUNNING,
        "windows_checked": run.windows_checked,
        "events_sent": run.events_sent,
        "events_unchanged": run.events_unchanged,
        "events_failed": run.events_failed,
        "unmapped": f"{run.unmapped_subjects} subject(s), {quantity(run.unmapped_quantity)}",
        "duration": duration_text(run),
    }


@admin.register(ReportRun)
class ReportRunAdmin(RereportPermissionMixin, ReadOnlyAdmin):
    list_display = [
        "run",
        "started",
        "trigger_and_requester",
        "period",
        "status_badge",
        "counters",
        "duration",
    ]
    list_filter = ["status", "trigger", "dry_run"]
    list_select_related = ["requested_by"]
    search_fields = ["requested_by__username", "error"]
    date_hierarchy = "started_at"
    actions = ["report_again"]
    rereport_actions = ("report_again",)
    fields = readonly_fields = (
        "trigger",
        "requested_by",
        "dry_run",
        "period",
        "selection",
        "started_at",
        "finished_at",
    )  # the errors are shown above these, beside the counters

    @admin.display(description="Run", ordering="id")
    def run(self, obj: ReportRun) -> str:
        return f"#{obj.pk}"

    @admin.display(description="Started (UTC)", ordering="started_at")
    def started(self, obj: ReportRun) -> str:
        return utc(obj.started_at)

    @admin.display(description="Trigger", ordering="trigger")
    def trigger_and_requester(self, obj: ReportRun) -> str:
        if obj.requested_by is None:
            return obj.get_trigger_display()
        return format_html(
            "{}<br><small>by {}</small>", obj.get_trigger_display(), obj.requested_by
        )

    @admin.display(description="Period (UTC)", ordering="period_start")
    def period(self, obj: ReportRun) -> str:
        return format_html(
            '<span style="white-space:nowrap">{} →<br>{}</span>',
            utc(obj.period_start),
            utc(obj.period_end),
        )

    @admin.display(description="Windows")
    def counters(self, obj: ReportRun) -> str:
        return format_html(
            '<span style="white-space:nowrap">{} sent, <span style="color:{}">{} failed</span>'
            "</span><br><small>{} unchanged of {} checked</small>",
            obj.events_sent,
            "#c62828" if obj.events_failed else "inherit",
            obj.events_failed,
            obj.events_unchanged,
            obj.windows_checked,
        )

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: ReportRun) -> str:
        return format_html(
            '<strong style="color:{}">{}</strong>{}',
            RUN_STATUS_COLOURS.get(RunStatus(obj.status), "#555"),
            obj.get_status_display(),
            DRY_RUN_NOTE if obj.dry_run else "",
        )

    @admin.display(description="Duration")
    def duration(self, obj: ReportRun) -> str:
        return duration_text(obj)

    @admin.display(description="Meters and customers")
    def selection(self, obj: ReportRun) -> str:
        meters = ", ".join(obj.meter_slugs) or "every active meter"
        customers = ", ".join(obj.customer_subjects[:20]) or "every active customer"
        if len(obj.customer_subjects) > 20:
            customers += f" and {len(obj.customer_subjects) - 20} more"
        return f"Meters: {meters}. Customers: {customers}."

    @admin.action(description="Report this period again…", permissions=["rereport"])
    def report_again(self, request: HttpRequest, queryset: QuerySet[ReportRun]) -> Any:
        runs = list(queryset[:2])
        if len(runs) != 1:
            self.message_user(
                request, "Select one run to report its period again.", messages.WARNING
            )
            return None
        return rereport_page(
            self,
            request,
            selection=rereport.select_like_run(run=runs[0]),
            post_url=request.get_full_path(),
            hidden=action_fields(request, action="report_again"),
        )

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path(
                "<int:object_id>/progress/",
                view(self.progress_view),
                name="billing_reportrun_progress",
            ),
            path(
                "<int:object_id>/report-again/",
                view(self.report_again_view),
                name="billing_reportrun_report_again",
            ),
            *super().get_urls(),
        ]

    def progress_view(self, request: HttpRequest, object_id: int) -> JsonResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return JsonResponse(run_progress(get_object_or_404(ReportRun, pk=object_id)))

    def report_again_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        """The re-report page for one run, opened from its page; it posts to the action."""
        if not self.has_rereport_permission(request):
            raise PermissionDenied
        run = get_object_or_404(ReportRun, pk=object_id)
        return rereport_page(
            self,
            request,
            selection=rereport.select_like_run(run=run),
            post_url=reverse("admin:billing_reportrun_changelist"),
            hidden=[
                ("action", "report_again"),
                ("select_across", "0"),
                (helpers.ACTION_CHECKBOX_NAME, str(run.pk)),
            ],
        )

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        run = _get(ReportRun, object_id)
        if run is not None:
            logs = run.logs.select_related("meter", "customer").order_by(
                "meter_id", "customer_id", "window_start"
            )
            extra_context = {
                **(extra_context or {}),
                "progress": run_progress(run),
                "progress_url": reverse("admin:billing_reportrun_progress", args=[run.pk]),
                "logs": logs[:RUN_PAGE_LOGS],
                "log_count": run.logs.count(),
                "logs_url": reverse("admin:billing_reportlog_changelist")
                + f"?run__id__exact={run.pk}",
                "report_again_url": reverse("admin:billing_reportrun_report_again", args=[run.pk])
                if self.has_rereport_permission(request)
                else "",
            }
        return super().change_view(request, object_id, form_url, extra_context)


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
    list_select_related = ["meter", "customer"]
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
        "meter",
        "customer_link",
        "window_start",
        "window_end",
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
        return utc(obj.created_at)

    @admin.display(description="Meter")
    def meter_name(self, obj: ReportLog) -> str:
        return obj.meter.name

    @admin.display(description="Run", ordering="run_id")
    def run_link(self, obj: ReportLog) -> str:
        return format_html('<a href="?run__id__exact={}">#{}</a>', obj.run_id, obj.run_id)

    @admin.display(description="Customer")
    def customer_link(self, obj: ReportLog) -> str:
        customer = obj.customer
        if not customer.stripe_customer_id:
            return customer.name
        return format_html(
            '{} <small><a href="{}" target="_blank" rel="noopener" title="{} in the Stripe '
            'dashboard">Stripe&nbsp;↗</a></small>',
            customer.name,
            dashboard_url(f"customers/{customer.stripe_customer_id}"),
            customer.stripe_customer_id,
        )

    @admin.display(description="Window start (UTC)")
    def window(self, obj: ReportLog) -> str:
        return format_html(
            '<span style="white-space:nowrap" title="until {}">{}</span>',
            utc(obj.window_end),
            utc(obj.window_start),
        )

    @admin.display(description="Old → new value")
    def change(self, obj: ReportLog) -> str:
        return f"{quantity(obj.previous_quantity)} → {quantity(obj.quantity)}"

    @admin.display(description="Status")
    def status_text(self, obj: ReportLog) -> str:
        """The outcome, with what Stripe said: its request id, or the error."""
        if obj.status == LogStatus.FAILED:
            return format_html(
                '<strong style="color:#c62828">Failed</strong><br><small>{}</small>', obj.error
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
        response = StreamingHttpResponse(
            report_log_csv(changelist.queryset), content_type="text/csv; charset=utf-8"
        )
        stamp = windows.utcnow().strftime("%Y%m%dT%H%MZ")
        response["Content-Disposition"] = f'attachment; filename="report-log-{stamp}.csv"'
        return response
