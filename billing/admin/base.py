"""What the billing admins share: the stylesheet, Stripe state and sync, read-only history, and
the permission behind re-reporting."""

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html

from billing.admin.dates import BoundedDateChangeList
from billing.admin.forms import WarningModelForm
from billing.admin.generic import ModelAdmin, ModelForm
from billing.admin.views import action_fields, rereport_page
from billing.integrations import stripe_sync
from billing.integrations.stripe_client import dashboard_url, is_live_mode
from billing.integrations.stripe_sync import SyncOutcome
from billing.models import StripeSynced
from billing.reconcile.queue import queue_reconciliation
from billing.reporting.selection import Selection

REREPORT_PERMISSION = "billing.rereport_usage"


def stripe_link(object_id: str, path: str) -> str:
    """A link to the object in the Stripe dashboard, saying whether it is live or test."""
    if not object_id:
        return "—"
    mode = "live" if is_live_mode() else "test"
    return format_html(
        '<a href="{}" target="_blank" rel="noopener">{}</a> <small>({})</small>',
        dashboard_url(f"{path}/{object_id}"),
        object_id,
        mode,
    )


class BillingAdmin(ModelAdmin):
    """Every billing admin page loads the app's stylesheet (status colours, layout), and reads
    its date hierarchy's parameters safely (billing/admin/dates.py)."""

    class Media:
        css = {"all": ["billing/admin.css"]}

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return BoundedDateChangeList


class StripeSyncedAdmin(BillingAdmin):
    """Shows each row's Stripe state, syncs it once per save and says how the sync went."""

    stripe_path = ""  # the object's path in the Stripe dashboard
    actions = ["sync_to_stripe"]
    list_filter = ["sync_status"]
    sync_readonly = ["sync_status", "sync_error", "synced_at", "created_at", "updated_at"]

    @admin.display(description="Stripe", ordering="sync_status")
    def stripe_status(self, obj: StripeSynced) -> str:
        return format_html(
            '<span class="mb-sync mb-sync-{}" title="{}">{}</span>',
            obj.sync_status,
            obj.sync_error or "",
            obj.get_sync_status_display(),
        )

    @admin.display(description="Stripe id")
    def stripe_id(self, obj: StripeSynced) -> str:
        return stripe_link(obj.stripe_id, self.stripe_path)

    @admin.action(description="Sync to Stripe", permissions=["change"])
    def sync_to_stripe(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        ok = failed = 0
        for obj in queryset:
            outcome = stripe_sync.sync_object(obj)
            if outcome:
                ok += 1
                self.log_change(request, obj, "Synced to Stripe.")
            else:
                failed += 1
                self.log_change(request, obj, f"Synced to Stripe: failed: {outcome.error}")
                self.message_user(request, f"{obj}: {outcome.error}", messages.WARNING)
        self.message_user(request, f"{ok} synced, {failed} failed.", messages.INFO)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if isinstance(form, WarningModelForm):
            for warning in form.warnings:
                self.message_user(request, warning, messages.WARNING)

    def save_related(
        self, request: HttpRequest, form: ModelForm, formsets: Any, change: bool
    ) -> None:
        """The row and its many-to-many relations are written: sync once the save commits."""
        super().save_related(request, form, formsets, change)

        def report(outcome: SyncOutcome) -> None:
            if outcome:
                self.message_user(request, f"Synced to Stripe: {outcome.obj}.", messages.SUCCESS)
            else:
                self.message_user(
                    request,
                    f"Saved, but Stripe did not take it: {outcome.error} "
                    "It stays marked failed; use “Sync to Stripe” to retry.",
                    messages.WARNING,
                )

        stripe_sync.sync_after_commit(form.instance, then=report)


class GuardedDeleteAdmin(BillingAdmin):
    """Rows that must not be deleted while `delete_refusal` gives a reason: their delete page and
    link are refused, and the bulk "Delete selected" action deletes none of a selection that
    holds one, saying why and what to do instead."""

    def delete_refusal(self, obj: Any) -> str | None:
        """Why this row cannot be deleted now, or None."""
        return None

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and self.delete_refusal(obj) is not None:
            return False
        return super().has_delete_permission(request, obj)

    # Named like Django's site-wide action, which it replaces on the admins that list it.
    @admin.action(permissions=["delete"], description="Delete selected %(verbose_name_plural)s")
    def delete_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> Any:
        """Django's "Delete selected" (confirmation page, then the deletion), for a selection
        with no row `delete_refusal` keeps; run again on the confirmation's post."""
        refused = [(obj, reason) for obj in queryset if (reason := self.delete_refusal(obj))]
        if refused:
            for obj, reason in refused[:10]:
                self.message_user(request, f"{obj}: {reason}", messages.ERROR)
            self.message_user(
                request,
                f"Nothing deleted: {len(refused)} of the selected rows cannot be deleted.",
                messages.ERROR,
            )
            return None
        return django_delete_selected(self, request, queryset)

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: Any = None
    ) -> HttpResponse:
        obj = self.get_object(request, unquote(object_id))
        reason = self.delete_refusal(obj) if obj is not None else None
        if (
            obj is not None
            and reason is not None
            and self.has_view_or_change_permission(request, obj)
        ):
            self.message_user(request, f"{obj} cannot be deleted: {reason}", messages.ERROR)
            opts = self.model._meta
            return HttpResponseRedirect(
                reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
            )
        return super().delete_view(request, object_id, extra_context)


class ReadOnlyAdmin(BillingAdmin):
    """The audit trail: nobody adds, edits or deletes it here, superusers included."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class RereportPermissionMixin(BillingAdmin):
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

    rereport_actions: tuple[str, ...] = ("rereport_usage",)

    def rereport_selection(self, queryset: QuerySet[Any]) -> Selection:
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


class ReconcileActionMixin(RereportPermissionMixin):
    """The "Reconcile with Stripe" action on a list of meters: starts a reconciliation of the
    selected meters over the default lookback, in the background, and opens its page. It needs
    billing.rereport_usage: drifting windows it finds are marked to be sent again."""

    rereport_actions: tuple[str, ...] = ("reconcile_with_stripe",)

    @admin.action(description="Reconcile with Stripe", permissions=["rereport"])
    def reconcile_with_stripe(self, request: HttpRequest, queryset: QuerySet[Any]) -> Any:
        check = queue_reconciliation(meters=list(queryset), requested_by=request.user)
        self.log_addition(request, check, "Reconciliation queued.")
        self.message_user(request, f"Reconciliation #{check.pk} started.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:billing_reconciliation_change", args=[check.pk]))
