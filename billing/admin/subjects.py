"""A customer's subjects in the admin: the inline list, the "Move a subject" page (preview, then
move and re-report; needs billing.move_subjects and billing.rereport_usage), the import from
OpenMeter (needs add and change customer and billing.rereport_usage) and the audit of moves.
The work is done in billing.subject_moves and billing.openmeter_import."""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse

from billing import clock
from billing.admin.base import REREPORT_PERMISSION, ReadOnlyAdmin
from billing.admin.generic import BaseInlineFormSet, ModelAdmin, TabularInline
from billing.integrations.openmeter import OpenMeterError
from billing.models import Customer, CustomerSubject, ReportRun, SubjectMove, Trigger
from billing.openmeter_import import import_customers
from billing.reporting import ReportInputError
from billing.reporting.preview import enqueue
from billing.subject_moves import apply_move, plan_move, preview_move

# Both re-report what they change: they need the re-report permission too.
MOVE_PERMISSIONS = ("billing.move_subjects", REREPORT_PERMISSION)
IMPORT_PERMISSIONS = ("billing.add_customer", "billing.change_customer", REREPORT_PERMISSION)
PREVIEW, CONFIRM = "preview", "confirm"


class OptionalManagementFormSet(BaseInlineFormSet):
    """A customer form posted without this inline's management form (a script, a page from
    before the inline existed) changes no subject, instead of failing the whole save."""

    def __init__(self, data: Any = None, *args: Any, **kwargs: Any) -> None:
        prefix = kwargs.get("prefix") or self.get_default_prefix()
        if data is not None and f"{prefix}-TOTAL_FORMS" not in data:
            data = data.copy()
            data[f"{prefix}-TOTAL_FORMS"] = data[f"{prefix}-INITIAL_FORMS"] = "0"
        super().__init__(data, *args, **kwargs)


class CustomerSubjectInline(TabularInline):
    """Editable while the customer has no usage in Stripe; after that a subject changes only
    through "Move a subject", which re-reports the windows it changes."""

    model = CustomerSubject
    formset = OptionalManagementFormSet
    fields = ["subject", "added_at"]
    readonly_fields = ["added_at"]
    extra = 0
    verbose_name = "other OpenMeter subject"
    verbose_name_plural = "other OpenMeter subjects (their usage is billed to this customer too)"

    def _locked(self, obj: Customer | None) -> bool:
        return obj is not None and obj.identity_locked()

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return not self._locked(obj) and super().has_add_permission(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return not self._locked(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return not self._locked(obj) and super().has_delete_permission(request, obj)


class MoveForm(forms.Form):
    subject = forms.CharField(label="OpenMeter subject", max_length=255)
    to_customer = forms.ModelChoiceField(
        Customer.objects.filter(active=True),
        required=False,
        label="Bill it to",
        empty_label="No customer (stop billing it)",
    )
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
        help_text="Why the subject moves: kept in the audit and on the runs.",
    )


def move_subject_view(model_admin: ModelAdmin, request: HttpRequest) -> HttpResponse:
    """Preview (a dry run of both customers' windows as if moved), then move and re-report."""
    if not request.user.has_perms(MOVE_PERMISSIONS):
        raise PermissionDenied
    step = request.POST.get("step") if request.method == "POST" else None
    errors: list[str] = []
    if step == CONFIRM:
        preview_run = get_object_or_404(ReportRun, pk=request.POST.get("preview") or 0)
        try:
            done = apply_move(
                preview_run=preview_run,
                requested_by=request.user,
                reason=request.POST.get("reason", ""),
            )
        except ReportInputError as exc:
            errors.append(str(exc))
        else:
            assert done.run is not None
            enqueue(done.run)
            model_admin.log_change(request, done.to_customer or done.from_customer, str(done))
            model_admin.message_user(
                request,
                f"Moved {done}. Run #{done.run.pk} re-reports the windows it changed.",
                messages.SUCCESS,
            )
            return HttpResponseRedirect(reverse("admin:billing_subjectmove_changelist"))
    form = MoveForm(request.POST if step == PREVIEW else None, initial=request.GET.dict())
    shown = None
    if step == PREVIEW and form.is_valid():
        try:
            move = plan_move(
                subject=form.cleaned_data["subject"], to_customer=form.cleaned_data["to_customer"]
            )
            shown = preview_move(
                move=move,
                requested_by=request.user,
                reason=form.cleaned_data["reason"],
                trigger=Trigger.ADMIN,
                now=clock.now(),
            )
        except ReportInputError as exc:
            errors.append(str(exc))
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Move a subject to another customer",
        "opts": model_admin.model._meta,
        "form": form,
        "preview": shown,
        "errors": errors,
    }
    return TemplateResponse(request, "admin/billing/customer/move_subject.html", context)


def import_view(model_admin: ModelAdmin, request: HttpRequest) -> HttpResponse:
    """GET: what an import would do (a dry run); POST: import."""
    if not request.user.has_perms(IMPORT_PERMISSIONS):
        raise PermissionDenied
    dry_run = request.method != "POST"
    result, error = None, ""
    try:
        result = import_customers(dry_run=dry_run, trigger=Trigger.ADMIN, requested_by=request.user)
    except OpenMeterError as exc:
        error = str(exc)
    if result is not None and not dry_run:
        for outcome in result.outcomes:
            if outcome.customer is not None and outcome.action != "unchanged":
                model_admin.log_change(request, outcome.customer, outcome.line())
        if result.run is not None:
            enqueue(result.run)
        model_admin.message_user(request, f"Imported from OpenMeter: {result.summary()}.")
        for problem in result.problems:
            model_admin.message_user(request, problem, messages.WARNING)
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Import customers from OpenMeter",
        "opts": model_admin.model._meta,
        "result": result,
        "dry_run": dry_run,
        "error": error,
    }
    return TemplateResponse(request, "admin/billing/customer/import_openmeter.html", context)


@admin.register(SubjectMove)
class SubjectMoveAdmin(ReadOnlyAdmin):
    list_display = ["moved_at", "subject", "from_customer", "to_customer", "moved_by", "run"]
    list_filter = ["moved_at"]
    search_fields = ["subject", "reason"]
    list_select_related = ["from_customer", "to_customer", "moved_by", "run"]
