"""The report runs, read-only for everyone: their live progress, what they changed in money,
Stripe's rejections, and "report this period again" (the report log is in report_log.py)."""

from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import mark_safe
from django.utils.text import Truncator

from billing import clock
from billing.admin.base import ReadOnlyAdmin, RereportPermissionMixin
from billing.admin.generic import TabularInline
from billing.admin.views import action_fields, rereport_page, run_action_fields
from billing.formatting import quantity, utc_minute, utc_second
from billing.models import ReportRun, RunPart, RunStatus
from billing.reporting.selection import select_like_run
from billing.reporting.summary import value_changes
from billing.stripe_rejections import rejections

RUN_PAGE_LOGS = 50  # the run page lists its first rows; the report log has them all
REASON_SHOWN = 80  # characters of a run's reason in the lists; its page shows all of it
DRY_RUN_NOTE = mark_safe("<br><small>dry run: nothing sent</small>")


def duration_text(run: ReportRun) -> str:
    end = run.finished_at or clock.now()  # the clock the engine sets finished_at by
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
        "rate_limited": run.rate_limited,
        "unmapped": f"{run.unmapped_subjects} subject(s), {quantity(run.unmapped_quantity)}",
        "duration": duration_text(run),
    }


class RunPartInline(TabularInline):
    """Which process did which part of the run (a meter, or a shard of its customers), when."""

    model = RunPart
    extra = 0
    can_delete = False
    fields = readonly_fields = (
        "what",
        "worker",
        "started",
        "finished",
        "events_sent",
        "events_unchanged",
        "events_failed",
        "error",
    )
    verbose_name_plural = "Parts (each done by one worker)"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Started (UTC)")
    def started(self, obj: RunPart) -> str:
        return utc_second(obj.started_at)

    @admin.display(description="Finished (UTC)")
    def finished(self, obj: RunPart) -> str:
        return utc_second(obj.finished_at)

    @admin.display(description="Part")
    def what(self, obj: RunPart) -> str:
        if obj.meter is None:
            return "preparation"
        shard = f", customers shard {obj.shard + 1} of {obj.shards}" if obj.shards > 1 else ""
        return f"{obj.meter.openmeter_slug}{shard}"


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
    search_fields = ["requested_by__username", "reason", "error"]
    date_hierarchy = "started_at"
    actions = ["report_again"]
    rereport_actions = ("report_again",)
    inlines = [RunPartInline]
    fields = readonly_fields = (
        "trigger",
        "requested_by",
        "reason",
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
        return utc_minute(obj.started_at)

    @admin.display(description="Trigger", ordering="trigger")
    def trigger_and_requester(self, obj: ReportRun) -> str:
        """Who asked, and why (the reason of a re-report, shortened: the run's page has it)."""
        text = obj.get_trigger_display()
        if obj.requested_by is not None:
            text = format_html("{}<br><small>by {}</small>", text, obj.requested_by)
        if obj.reason:
            text = format_html(
                '{}<br><small class="mb-reason" title="{}">“{}”</small>',
                text,
                obj.reason,
                Truncator(obj.reason).chars(REASON_SHOWN),
            )
        return text

    @admin.display(description="Period (UTC)", ordering="period_start")
    def period(self, obj: ReportRun) -> str:
        return format_html(
            '<span class="mb-nowrap">{} →<br>{}</span>',
            utc_minute(obj.period_start),
            utc_minute(obj.period_end),
        )

    @admin.display(description="Windows")
    def counters(self, obj: ReportRun) -> str:
        return format_html(
            '<span class="mb-nowrap">{} sent, <span class="{}">{} failed</span></span>'
            "<br><small>{} unchanged of {} checked</small>",
            obj.events_sent,
            "mb-failed" if obj.events_failed else "",
            obj.events_failed,
            obj.events_unchanged,
            obj.windows_checked,
        )

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: ReportRun) -> str:
        return format_html(
            '<strong class="mb-status mb-status-{}">{}</strong>{}',
            obj.status,
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
            selection=select_like_run(run=runs[0]),
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
            selection=select_like_run(run=run),
            post_url=reverse("admin:billing_reportrun_changelist"),
            hidden=run_action_fields(run, action="report_again"),
        )

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        run = self.get_object(request, unquote(object_id))
        if run is not None:
            logs = run.logs.select_related("meter", "customer").order_by(
                "meter_id", "customer_id", "window_start"
            )
            extra_context = {
                **(extra_context or {}),
                "progress": run_progress(run),
                "value_changes": [] if run.status == RunStatus.RUNNING else value_changes(run=run),
                "rejections": rejections(report_log__run=run),
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
