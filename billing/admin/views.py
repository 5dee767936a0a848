"""The re-report page's request handling, shared by its three ways in (customers, meters, a run).
The work is done in billing.reporting (selection, presets, preview)."""

from typing import Any

from django.contrib import messages
from django.contrib.admin import helpers
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse

from billing import clock, windows
from billing.admin.forms import RereportForm
from billing.admin.generic import ModelAdmin
from billing.formatting import utc_minute
from billing.models import ReportRun
from billing.reporting import ReportInputError
from billing.reporting.periods import coarsest_window
from billing.reporting.presets import period_presets
from billing.reporting.preview import confirm, preview
from billing.reporting.selection import Selection

PREVIEW, CONFIRM = "preview", "confirm"


def action_fields(request: HttpRequest, *, action: str) -> list[tuple[str, str]]:
    """The hidden fields that bring a post back into the changelist action, selection kept."""
    fields = [("action", action), ("select_across", request.POST.get("select_across", "0"))]
    return fields + [
        (helpers.ACTION_CHECKBOX_NAME, pk)
        for pk in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
    ]


def run_action_fields(run: ReportRun, *, action: str) -> list[tuple[str, str]]:
    """The hidden fields that post to a changelist action on one run, from the run's page."""
    return [("action", action), ("select_across", "0"), (helpers.ACTION_CHECKBOX_NAME, str(run.pk))]


def rereport_page(
    model_admin: ModelAdmin,
    request: HttpRequest,
    *,
    selection: Selection,
    post_url: str,
    hidden: list[tuple[str, str]],
) -> HttpResponse:
    """The re-report page: the period form, then the dry run's preview, then the real run.

    Every step posts back to `post_url` with `hidden` (the changelist and its action), so the
    action, and with it the permission check, runs again on each post. The selection's
    `initial` fills the form on the first step (a custom period, say).
    """
    now = clock.now()
    step = request.POST.get("step") if request.method == "POST" else None
    errors: list[str] = []
    if step == CONFIRM:
        preview_run = get_object_or_404(ReportRun, pk=_int(request.POST.get("preview")))
        try:
            run = confirm(preview_run=preview_run, requested_by=request.user, now=now)
        except ReportInputError as exc:
            errors.append(str(exc))
        else:
            return _started(model_admin, request, run=run, post_url=post_url)

    form = RereportForm(
        request.POST if step == PREVIEW else None,
        presets=period_presets(selection=selection, now=now),
        meters=selection.meters,
        now=now,
        initial=selection.initial or None,
    )
    shown = None
    if step == PREVIEW and selection.usable and form.is_valid():
        start, end = form.cleaned_data["period"]
        try:
            shown = preview(
                selection=selection,
                start=start,
                end=end,
                requested_by=request.user,
                reason=form.cleaned_data["reason"],
                now=now,
            )
        except ReportInputError as exc:
            errors.append(str(exc))
    opts = model_admin.model._meta
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Re-report usage to Stripe",
        "opts": opts,
        "selection": selection,
        "form": form,
        "preview": shown,
        "errors": errors,
        "post_url": post_url,
        "hidden": hidden,
        "window_unit": "days" if coarsest_window(selection.meters) == windows.DAY else "hours",
        "changelist_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"),
    }
    return TemplateResponse(request, "admin/billing/rereport.html", context)


def _started(
    model_admin: ModelAdmin, request: HttpRequest, *, run: ReportRun, post_url: str
) -> HttpResponse:
    """Say the run started, and go to its page (or back to the list, without the right to see
    runs)."""
    message = f"Run #{run.pk} is reporting {windows_text(run)} to Stripe."
    model_admin.log_addition(
        request, run, f"Re-report of {windows_text(run)} queued. Reason: {run.reason}"
    )
    if not request.user.has_perm("billing.view_reportrun"):
        model_admin.message_user(request, message, messages.SUCCESS)
        return HttpResponseRedirect(post_url)
    model_admin.message_user(
        request, f"{message} This page follows its progress.", messages.SUCCESS
    )
    return HttpResponseRedirect(reverse("admin:billing_reportrun_change", args=[run.pk]))


def windows_text(run: ReportRun) -> str:
    return f"{utc_minute(run.period_start)} → {utc_minute(run.period_end)} UTC"


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
