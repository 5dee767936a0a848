"""What the billing admins share: the stylesheet, Stripe state and sync, read-only history, and
the permission behind re-reporting."""

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html

from billing.admin.forms import WarningModelForm
from billing.admin.generic import ModelAdmin, ModelForm
from billing.admin.views import action_fields, rereport_page
from billing.integrations import stripe_sync
from billing.integrations.stripe_client import dashboard_url, is_live_mode
from billing.integrations.stripe_sync import SyncOutcome
from billing.models import StripeSynced
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
    """Every billing admin page loads the app's stylesheet (status colours, layout)."""

    class Media:
        css = {"all": ["billing/admin.css"]}


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

    @admin.action(description="Sync to Stripe")
    def sync_to_stripe(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        ok = failed = 0
        for obj in queryset:
            outcome = stripe_sync.sync_object(obj)
            if outcome:
                ok += 1
            else:
                failed += 1
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

    rereport_actions = ("rereport_usage",)

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
