"""What finance staff keep and Stripe mirrors: meters, customers, prices and subscriptions."""

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, path, reverse

from billing import aggregations, charts, clock
from billing.admin.base import (
    BillingAdmin,
    GuardedDeleteAdmin,
    ReconcileActionMixin,
    RereportActionMixin,
    StripeSyncedAdmin,
)
from billing.admin.customer_form import CustomerForm
from billing.admin.forms import MeterForm
from billing.admin.generic import ModelAdmin, TabularInline
from billing.admin.subjects import (
    IMPORT_PERMISSIONS,
    MOVE_PERMISSIONS,
    CustomerSubjectInline,
    import_view,
    move_subject_view,
)
from billing.closing.projection import projections
from billing.integrations import stripe_sync
from billing.integrations.stripe_errors import describe
from billing.models import (
    ArchivedPrice,
    Customer,
    Meter,
    PriceMapping,
    Subscription,
    SyncStatus,
)
from billing.openmeter_import import link_customer
from billing.reporting.selection import Selection, select_customers, select_meters
from billing.stripe_rejections import rejections


class UsageChartsMixin(BillingAdmin):
    """A change page that charts the row's reported usage per UTC day (see billing.charts)."""

    def usage_series(self, obj: Any) -> list[charts.DailyUsage]:
        raise NotImplementedError

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        obj = self.get_object(request, unquote(object_id))
        if obj is not None:
            usage_charts = [
                {
                    "meter": usage.meter,
                    "summary": usage.summary,
                    "svg": charts.bar_chart(usage, title=usage.title),
                }
                for usage in self.usage_series(obj)
            ]
            extra_context = {**(extra_context or {}), "usage_charts": usage_charts}
        return super().change_view(request, object_id, form_url, extra_context)


@admin.register(Meter)
class MeterAdmin(UsageChartsMixin, RereportActionMixin, ReconcileActionMixin, StripeSyncedAdmin):
    form = MeterForm
    stripe_path = "meters"
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
    search_fields = ["name", "openmeter_slug", "event_name", Meter.stripe_id_field]
    actions = ["sync_to_stripe", "rereport_usage", "reconcile_with_stripe"]
    rereport_actions: tuple[str, ...] = ("rereport_usage", "reconcile_with_stripe")

    def rereport_selection(self, queryset: QuerySet[Meter]) -> Selection:
        return select_meters(meters=queryset)

    @admin.display(description="What Stripe bills")
    def billed(self, obj: Meter) -> str:
        if not obj.openmeter_aggregation:
            return "Known once the OpenMeter meter is read (on save)."
        text = aggregations.billed_text(obj.openmeter_aggregation)
        formula = aggregations.stripe_formula(obj.openmeter_aggregation)
        return f"{text[0].upper()}{text[1:]}. Stripe meter formula: {formula}."

    def usage_series(self, obj: Meter) -> list[charts.DailyUsage]:
        return [charts.meter_usage(meter=obj, today=clock.now().date())]

    def get_readonly_fields(self, request: HttpRequest, obj: Meter | None = None) -> list[str]:
        fields = [Meter.stripe_id_field, "openmeter_aggregation", "billed", *self.sync_readonly]
        if obj is not None and obj.stripe_id:
            # Stripe cannot change these once the meter exists.
            fields += ["event_name", "window"]
        return fields


@admin.register(Customer)
class CustomerAdmin(UsageChartsMixin, RereportActionMixin, StripeSyncedAdmin):
    form = CustomerForm
    stripe_path = "customers"
    list_display = ["name", "email", "openmeter_subject", "active", "stripe_status", "stripe_id"]
    list_filter = ["sync_status", "active"]
    search_fields = [
        "name",
        "email",
        "openmeter_subject",
        "=subjects__subject",
        "=openmeter_customer_id",
        Customer.stripe_id_field,
    ]
    actions = ["sync_to_stripe", "rereport_usage", "import_from_openmeter"]
    inlines = [CustomerSubjectInline]
    change_list_template = "admin/billing/customer/change_list.html"

    def rereport_selection(self, queryset: QuerySet[Customer]) -> Selection:
        return select_customers(customers=queryset)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        info = getattr(form, "openmeter_customer", None)
        if info is not None:
            link_customer(customer=form.instance, info=info)
            self.message_user(
                request,
                f"Linked to OpenMeter customer {info.name}: its subject keys "
                f"({', '.join(info.subject_keys) or 'none yet'}) are billed to this customer "
                "from the next run.",
            )

    def get_urls(self) -> list[URLPattern]:
        def view(func: Callable[[ModelAdmin, HttpRequest], HttpResponse]) -> Any:
            return self.admin_site.admin_view(lambda request: func(self, request))

        return [
            path("move-subject/", view(move_subject_view), name="billing_customer_move_subject"),
            path("import-openmeter/", view(import_view), name="billing_customer_import"),
            *super().get_urls(),
        ]

    @admin.action(description="Import customers from OpenMeter…", permissions=["import"])
    def import_from_openmeter(self, request: HttpRequest, queryset: Any) -> HttpResponse:
        """The selection does not matter: every OpenMeter customer is read."""
        return HttpResponseRedirect(reverse("admin:billing_customer_import"))

    def has_import_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perms(IMPORT_PERMISSIONS)

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        extra_context = {
            **(extra_context or {}),
            "can_move_subjects": request.user.has_perms(MOVE_PERMISSIONS),
            "can_import": request.user.has_perms(IMPORT_PERMISSIONS),
        }
        return super().changelist_view(request, extra_context)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        customer = self.get_object(request, unquote(object_id))
        if customer is not None:
            extra_context = {
                **(extra_context or {}),
                "rejections": rejections(report_log__customer=customer),
                "projections": projections(customer=customer),
                "can_move_subjects": request.user.has_perms(MOVE_PERMISSIONS),
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def usage_series(self, obj: Customer) -> list[charts.DailyUsage]:
        return charts.customer_usage(customer=obj, today=clock.now().date())

    def get_readonly_fields(self, request: HttpRequest, obj: Customer | None = None) -> list[str]:
        fields = list(self.sync_readonly)
        if obj is not None and obj.identity_locked():
            # Usage was reported under them, whatever the last sync did (billing/models.py).
            fields += Customer.IDENTITY_FIELDS
        elif obj is not None and obj.stripe_id and obj.sync_status == SyncStatus.SYNCED:
            fields.append(Customer.stripe_id_field)
        return fields


class ArchivedPriceInline(TabularInline):
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
class PriceMappingAdmin(GuardedDeleteAdmin, StripeSyncedAdmin):
    actions = ["sync_to_stripe", "delete_selected"]
    stripe_path = "prices"
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
    search_fields = [
        "product_name",
        "stripe_product_id",
        PriceMapping.stripe_id_field,
        "meter__name",
    ]
    list_select_related = ["meter"]
    inlines = [ArchivedPriceInline]
    exclude = ["stripe_price_amount", "stripe_price_currency", "stripe_price_interval"]

    def get_readonly_fields(
        self, request: HttpRequest, obj: PriceMapping | None = None
    ) -> list[str]:
        fields = [PriceMapping.stripe_id_field, *self.sync_readonly]
        if obj is not None and obj.stripe_id:
            fields += ["meter", "stripe_product_id"]  # a price bills one meter for good
        return fields

    def delete_refusal(self, obj: PriceMapping) -> str | None:
        """The price history is kept: a price in Stripe, or one with earlier prices, stays."""
        if obj.stripe_price_id or obj.archived_prices.exists():
            return (
                "it has a Stripe price and its price history is kept. Untick “active” instead "
                "(and move its subscriptions to another price)."
            )
        return None


@admin.register(Subscription)
class SubscriptionAdmin(GuardedDeleteAdmin, StripeSyncedAdmin):
    stripe_path = "subscriptions"
    list_display = [
        "__str__",
        "customer",
        "status",
        "on_archived_price",
        "stripe_status",
        "stripe_id",
    ]
    list_filter = ["sync_status", "status"]
    search_fields = ["customer__name", "customer__openmeter_subject", Subscription.stripe_id_field]
    list_select_related = ["customer"]
    filter_horizontal = ["prices"]
    actions = ["sync_to_stripe", "cancel_in_stripe", "move_to_current_prices", "delete_selected"]
    exclude = ["stripe_items", "cancel_requested"]

    def get_readonly_fields(
        self, request: HttpRequest, obj: Subscription | None = None
    ) -> list[str]:
        fields = [Subscription.stripe_id_field, "status", *self.sync_readonly]
        if obj is not None and obj.stripe_id:
            fields += ["customer", "bill_from"]
        return fields

    @admin.display(description="On an archived price", boolean=True)
    def on_archived_price(self, obj: Subscription) -> bool:
        return ArchivedPrice.objects.filter(stripe_price_id__in=list(obj.stripe_items)).exists()

    def delete_refusal(self, obj: Subscription) -> str | None:
        if obj.active_in_stripe:
            return (
                "it is still active in Stripe, which would go on billing it. "
                "Use “Cancel in Stripe” first; a canceled subscription can be deleted."
            )
        return None

    @admin.action(description="Cancel in Stripe", permissions=["change"])
    def cancel_in_stripe(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        for sub in queryset:
            Subscription.objects.filter(pk=sub.pk).update(cancel_requested=True)
            sub.cancel_requested = True
            outcome = stripe_sync.sync_object(sub)
            if outcome:
                self.log_change(request, sub, "Canceled in Stripe.")
                self.message_user(request, f"{sub}: canceled in Stripe.", messages.SUCCESS)
            else:
                self.log_change(request, sub, f"Cancel in Stripe: failed: {outcome.error}")
                self.message_user(request, f"{sub}: {outcome.error}", messages.WARNING)

    @admin.action(description="Move to the current prices", permissions=["change"])
    def move_to_current_prices(
        self, request: HttpRequest, queryset: QuerySet[Subscription]
    ) -> None:
        for sub in queryset:
            try:
                moved = stripe_sync.move_to_current_prices(sub)
            except Exception as exc:
                error = describe(exc)
                self.log_change(request, sub, f"Move to the current prices: failed: {error}")
                self.message_user(request, f"{sub}: {error}", messages.WARNING)
            else:
                self.log_change(request, sub, f"Moved {moved} item(s) to the current prices.")
                self.message_user(request, f"{sub}: {moved} item(s) moved to the current price.")
