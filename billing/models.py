"""Meterbridge's data model: what finance staff keep, and the history of what was reported.

Names follow DESIGN.md: commands, admin and tests use them.
"""

from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

from billing import aggregations, clock, validators, windows


class SyncStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SYNCED = "synced", "Synced"
    FAILED = "failed", "Failed"


class StripeSynced(models.Model):
    """A row that mirrors an object in Stripe; its sync state is kept beside it."""

    stripe_id_field = ""  # the field holding the Stripe object's id

    sync_status = models.CharField(
        max_length=10, choices=SyncStatus.choices, default=SyncStatus.PENDING, db_index=True
    )
    sync_error = models.TextField(blank=True)
    synced_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True

    @property
    def stripe_id(self) -> str:
        return str(getattr(self, self.stripe_id_field))

    def reportable_reason(self) -> str | None:
        """Why usage cannot be reported for this row now, or None if it can.

        The one rule for the scheduled run, `report_usage` and the admin's re-report: only an
        active row whose last sync to Stripe succeeded is billed.
        """
        if not getattr(self, "active", True):
            return "inactive"
        if not self.stripe_id:
            return "it is not in Stripe yet: save it or use “Sync to Stripe”"
        if self.sync_status == SyncStatus.FAILED:
            return f"its last sync to Stripe failed ({self.sync_error}): fix it and sync again"
        if self.sync_status != SyncStatus.SYNCED:
            return "its Stripe sync is still pending: use “Sync to Stripe”"
        return None


def unique_when_set(field: str) -> models.UniqueConstraint:
    """A Stripe id may be blank on many rows (not in Stripe yet) but names one row once set."""
    return models.UniqueConstraint(
        fields=[field], condition=~Q(**{field: ""}), name=f"unique_{field}"
    )


class Window(models.TextChoices):
    HOUR = windows.HOUR, "Hourly"
    DAY = windows.DAY, "Daily"


class Meter(StripeSynced):
    stripe_id_field = "stripe_meter_id"
    name = models.CharField(max_length=250, help_text="Shown in Stripe as the meter's name.")
    openmeter_slug = models.CharField(
        "OpenMeter slug",
        max_length=100,
        unique=True,
        validators=[validators.openmeter_slug],
        help_text="SUM and COUNT meters bill the period's total. UNIQUE_COUNT, MAX, MIN, LATEST "
        "and AVG meters bill the aggregate from the start of each customer's billing period "
        "(for UNIQUE_COUNT: the period's unique count).",
    )
    event_name = models.CharField(
        max_length=100,
        unique=True,
        blank=True,
        validators=[validators.event_name],
        help_text="Stripe meter event name. Leave blank to use the OpenMeter slug. "
        "Cannot change once the meter exists in Stripe.",
    )
    window = models.CharField(
        max_length=4,
        choices=Window.choices,
        default=Window.HOUR,
        help_text="Usage is reported per UTC hour or day. Cannot change once in Stripe.",
    )
    stripe_meter_id = models.CharField(
        "Stripe meter id",
        max_length=100,
        blank=True,
        validators=[validators.stripe_meter_id],
    )
    openmeter_aggregation = models.CharField(
        "OpenMeter aggregation",
        max_length=20,
        blank=True,
        help_text="The OpenMeter meter's aggregation, read on save.",
    )
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]
        constraints = [unique_when_set("stripe_meter_id")]

    def __str__(self) -> str:
        return f"{self.name} ({self.openmeter_slug})"

    def save(self, *args: object, **kwargs: object) -> None:
        if not self.event_name:
            self.event_name = self.openmeter_slug
        super().save(*args, **kwargs)  # type: ignore[arg-type]

    @property
    def window_length(self) -> timedelta:
        return windows.length(self.window)

    @staticmethod
    def aggregation_problem(aggregation: str) -> str | None:
        """Why an OpenMeter meter with this aggregation cannot be billed, or None if it can."""
        return aggregations.problem(aggregation)

    @property
    def period_to_date(self) -> bool:
        """Whether each window carries the value from the customer's period start (see
        billing.aggregations): UNIQUE_COUNT, MAX, MIN, LATEST and AVG meters."""
        return aggregations.is_period_to_date(self.openmeter_aggregation)


class Customer(StripeSynced):
    stripe_id_field = "stripe_customer_id"
    name = models.CharField(max_length=256)
    email = models.EmailField(max_length=512, blank=True)
    openmeter_subject = models.CharField(
        "OpenMeter subject",
        max_length=255,
        unique=True,
        help_text="The subject key this customer's usage carries in OpenMeter.",
    )
    stripe_customer_id = models.CharField(
        "Stripe customer id",
        max_length=100,
        blank=True,
        validators=[validators.stripe_customer_id],
        help_text="Leave blank to create the customer in Stripe; fill to link an existing one.",
    )
    openmeter_customer_id = models.CharField(
        "OpenMeter customer",
        max_length=256,
        blank=True,
        help_text="Optional: the id or key of an OpenMeter customer. Its subject keys "
        "(usageAttribution) are read from OpenMeter and billed to this customer.",
    )
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            unique_when_set("stripe_customer_id"),
            unique_when_set("openmeter_customer_id"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.openmeter_subject})"

    def clean(self) -> None:
        super().clean()
        held = CustomerSubject.objects.filter(subject=self.openmeter_subject)
        owner = held.exclude(customer_id=self.pk).select_related("customer").first()
        if owner is not None:
            raise ValidationError(
                {
                    "openmeter_subject": f"'{self.openmeter_subject}' is a subject of customer "
                    f"{owner.customer.name}."
                }
            )

    # Fixed once usage was reported: Stripe bills what was sent to that Stripe customer, and
    # the ledger is keyed by it. Relinking would bill the same usage again to the new one.
    IDENTITY_FIELDS = ("stripe_customer_id", "openmeter_subject")

    def reported_under(self) -> str | None:
        """The Stripe customer id this customer's usage was reported under, or None while no
        usage was reported for it (a `sent` ReportLog row or a ReportedWindow).

        The one rule: once it is not None, `IDENTITY_FIELDS` cannot change."""
        if self.pk is None:
            return None
        for rows in (
            ReportLog.objects.filter(customer_id=self.pk, status=LogStatus.SENT),
            ReportedWindow.objects.filter(customer_id=self.pk),
        ):
            ids = rows.order_by().exclude(stripe_customer_id="")
            found = ids.values_list("stripe_customer_id", flat=True)[:1]
            if found:
                return str(found[0])
            if rows.exists():  # a row from before the history kept the Stripe id
                saved = Customer.objects.filter(pk=self.pk).values_list(
                    "stripe_customer_id", flat=True
                )
                return str(saved[0]) if saved and saved[0] else "its earlier Stripe customer"
        return None

    def identity_locked(self) -> bool:
        """Whether the Stripe customer id and OpenMeter subject are fixed (see reported_under)."""
        return self.reported_under() is not None

    @staticmethod
    def identity_lock_message(stripe_customer_id: str) -> str:
        """What to tell someone who tries to change a locked identity, and what to do instead."""
        return (
            f"This customer has usage reported to Stripe under {stripe_customer_id}; its Stripe "
            "customer and OpenMeter subject cannot change. Create a new customer for the new id "
            "and deactivate this one."
        )


class CustomerSubject(models.Model):
    """One more OpenMeter subject key (an API key, a user, a workspace) whose usage is billed to
    the customer, beside its own `openmeter_subject`. A subject key is billed to one customer."""

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="subjects")
    subject = models.CharField("OpenMeter subject", max_length=255, unique=True)
    added_at = models.DateTimeField(default=clock.now, editable=False)

    class Meta:
        ordering = ["subject"]
        verbose_name = "subject"

    def __str__(self) -> str:
        return self.subject

    def clean(self) -> None:
        super().clean()
        owner = (
            Customer.objects.filter(openmeter_subject=self.subject)
            .exclude(pk=self.customer_id)
            .first()
        )
        if owner is not None:
            raise ValidationError(
                {"subject": f"'{self.subject}' is the subject of customer {owner.name}."}
            )


class SubjectMove(models.Model):
    """The audit of one change of which customer a subject's usage is billed to. Never edited."""

    subject = models.CharField("OpenMeter subject", max_length=255, db_index=True)
    from_customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    to_customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    reason = models.TextField()
    moved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    moved_at = models.DateTimeField(default=clock.now, editable=False, db_index=True)
    # The dry run that showed the change first, and the run that re-reported it.
    preview_run = models.ForeignKey(
        "ReportRun", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    run = models.ForeignKey(
        "ReportRun", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["-moved_at", "-pk"]
        permissions = [("move_subjects", "Can move subjects between customers")]

    def __str__(self) -> str:
        return f"{self.subject}: {self.from_customer or '(none)'} → {self.to_customer or '(none)'}"


class Interval(models.TextChoices):
    DAY = "day", "Daily"
    WEEK = "week", "Weekly"
    MONTH = "month", "Monthly"
    YEAR = "year", "Yearly"


class PriceMapping(StripeSynced):
    stripe_id_field = "stripe_price_id"
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="prices")
    product_name = models.CharField(max_length=250)
    stripe_product_id = models.CharField(
        "Stripe product id",
        max_length=100,
        blank=True,
        validators=[validators.stripe_product_id],
        help_text="Leave blank to create a product; fill to use an existing one.",
    )
    stripe_price_id = models.CharField(
        "Stripe price id",
        max_length=100,
        blank=True,
        validators=[validators.stripe_price_id],
        help_text="Filled by the sync. A changed amount creates a new price.",
    )
    currency = models.CharField(max_length=3, default="usd", validators=[validators.currency_code])
    unit_amount_decimal = models.DecimalField(
        "unit amount",
        max_digits=24,
        decimal_places=12,
        validators=[MinValueValidator(Decimal(0), "The amount cannot be negative.")],
        help_text="Per unit, in the currency's minor unit (cents for usd): 0.5 is half a cent.",
    )
    interval = models.CharField(max_length=5, choices=Interval.choices, default=Interval.MONTH)
    active = models.BooleanField(default=True)
    # What the current Stripe price was created with: a difference means a new price is due.
    stripe_price_amount = models.DecimalField(max_digits=24, decimal_places=12, null=True)
    stripe_price_currency = models.CharField(max_length=3, blank=True)
    stripe_price_interval = models.CharField(max_length=5, blank=True)

    class Meta:
        ordering = ["product_name"]
        verbose_name = "price"

    def __str__(self) -> str:
        return f"{self.product_name}: {self.unit_amount_decimal} {self.currency}/{self.meter.name}"


class ArchivedPrice(models.Model):
    """A Stripe price replaced when the amount changed (Stripe prices are immutable)."""

    # PROTECT: deleting a price must never delete its price history.
    price_mapping = models.ForeignKey(
        PriceMapping, on_delete=models.PROTECT, related_name="archived_prices"
    )
    stripe_price_id = models.CharField(max_length=100, unique=True)
    unit_amount_decimal = models.DecimalField(max_digits=24, decimal_places=12)
    currency = models.CharField(max_length=3)
    replaced_by = models.CharField(max_length=100)
    archived_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-archived_at"]

    def __str__(self) -> str:
        return self.stripe_price_id


# Stripe subscription statuses after which nothing more is billed.
ENDED_SUBSCRIPTION = frozenset({"canceled", "incomplete_expired"})


class Subscription(StripeSynced):
    stripe_id_field = "stripe_subscription_id"
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="subscriptions")
    prices = models.ManyToManyField(PriceMapping, related_name="subscriptions", blank=True)
    stripe_subscription_id = models.CharField(
        "Stripe subscription id",
        max_length=100,
        blank=True,
        validators=[validators.stripe_subscription_id],
    )
    status = models.CharField(max_length=30, blank=True, help_text="The status Stripe reports.")
    bill_from = models.DateTimeField(
        "bill usage from",
        null=True,
        blank=True,
        help_text="Optional, UTC: start the subscription at 00:00 UTC of this earlier day, so that "
        "usage since then is billed (Stripe's backdate_start_date). Only used when the "
        "subscription is created in Stripe.",
    )
    cancel_requested = models.BooleanField(default=False)
    # Stripe subscription item per price: {"<stripe price id>": "<si_...>"}.
    stripe_items = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Subscription of {self.customer.name}" + (
            f" ({self.stripe_subscription_id})" if self.stripe_subscription_id else ""
        )

    def clean(self) -> None:
        super().clean()
        if self.bill_from is not None and not self.stripe_subscription_id:
            if self.bill_from >= clock.now():
                raise ValidationError({"bill_from": "Bill usage from a moment in the past."})

    @property
    def active_in_stripe(self) -> bool:
        """Whether Stripe may still bill it: it exists there and has not ended (canceled)."""
        return bool(self.stripe_subscription_id) and self.status not in ENDED_SUBSCRIPTION


class Trigger(models.TextChoices):
    SCHEDULE = "schedule", "Schedule"
    ADMIN = "admin", "Admin"
    COMMAND = "command", "Command"
    WEBHOOK = "webhook", "Stripe webhook"


class RunMode(models.TextChoices):
    LOOKBACK = "lookback", "Lookback (each meter's recent closed windows)"
    PERIOD = "period", "Chosen period"


class RunStatus(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    PARTIAL = "partial", "Partial"
    FAILED = "failed", "Failed"


class ReportRun(models.Model):
    trigger = models.CharField(max_length=10, choices=Trigger.choices)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    reason = models.TextField(blank=True, help_text="Why the period was reported again.")
    # What the run covers. lookback: each meter's own closed windows of the lookback before
    # period_end; period: exactly [period_start, period_end) on every meter.
    mode = models.CharField(max_length=10, choices=RunMode.choices, default=RunMode.PERIOD)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    dry_run = models.BooleanField(default=False)
    status = models.CharField(
        max_length=10, choices=RunStatus.choices, default=RunStatus.RUNNING, db_index=True
    )
    # The selection the run was asked for (empty list: every active one).
    meter_slugs = models.JSONField(default=list, blank=True)
    customer_subjects = models.JSONField(default=list, blank=True)
    # A preview of a subject move: {subject: customer pk, or None for no customer} as if moved.
    assumed_subjects = models.JSONField(default=dict, blank=True)
    windows_checked = models.PositiveIntegerField(default=0)
    events_sent = models.PositiveIntegerField(default=0)
    events_unchanged = models.PositiveIntegerField(default=0)
    events_failed = models.PositiveIntegerField(default=0)
    rate_limited = models.PositiveIntegerField(
        default=0, help_text="Stripe answers 429 (too many requests) the run waited out."
    )
    unmapped_subjects = models.PositiveIntegerField(default=0)
    unmapped_quantity = models.DecimalField(default=Decimal(0), max_digits=32, decimal_places=12)
    # From the app's clock, as finished_at is: a run's duration is read on one clock.
    started_at = models.DateTimeField(default=clock.now, editable=False, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    # A scheduled run: the schedule slot it reports for. Unique, so that two clusters starting
    # the same slot make one run.
    scheduled_for = models.DateTimeField(null=True, blank=True, unique=True, editable=False)

    class Meta:
        ordering = ["-started_at", "-pk"]
        permissions = [("rereport_usage", "Can re-report usage to Stripe")]

    def __str__(self) -> str:
        return f"Run #{self.pk} ({self.trigger}, {self.status})"


class RunPart(models.Model):
    """A piece of a run that one worker does: a meter (or one shard of its customers), or the
    run's preparation (meter empty). The run's counters add up its parts; the run ends when its
    last part does."""

    run = models.ForeignKey(ReportRun, on_delete=models.CASCADE, related_name="parts")
    meter = models.ForeignKey(Meter, null=True, blank=True, on_delete=models.CASCADE)
    shard = models.PositiveSmallIntegerField(default=0)
    shards = models.PositiveSmallIntegerField(default=1)
    windows_checked = models.PositiveIntegerField(default=0)
    events_sent = models.PositiveIntegerField(default=0)
    events_unchanged = models.PositiveIntegerField(default=0)
    events_failed = models.PositiveIntegerField(default=0)
    rate_limited = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    worker = models.CharField(max_length=200, blank=True, help_text="host:pid that did it")
    created_at = models.DateTimeField(default=clock.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["run", "pk"]

    def __str__(self) -> str:
        what = self.meter.openmeter_slug if self.meter_id and self.meter else "preparation"
        return f"Run #{self.run_id} part {what} {self.shard + 1}/{self.shards}"


class LogStatus(models.TextChoices):
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"
    DRY_RUN = "dry_run", "Dry run"


class ReportLog(models.Model):
    """One value sent (or, in a dry run, that would be sent) to Stripe. Never edited or deleted."""

    run = models.ForeignKey(ReportRun, on_delete=models.PROTECT, related_name="logs")
    # reportlog_window_idx begins with the meter: an index of its own would only slow writes.
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="logs", db_index=False)
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="logs")
    # What the value was sent with: the history keeps them even if the rows change later.
    stripe_customer_id = models.CharField("Stripe customer id", max_length=100, blank=True)
    event_name = models.CharField(max_length=100, blank=True)
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    quantity = models.DecimalField(max_digits=32, decimal_places=12)
    previous_quantity = models.DecimalField(null=True, blank=True, max_digits=32, decimal_places=12)
    # Period-to-date meters (UNIQUE_COUNT, MAX...): the start of the billing period the quantity
    # is counted from (its first window). Empty for SUM and COUNT meters.
    period_start = models.DateTimeField("billing period from", null=True, blank=True)
    identifier = models.CharField(max_length=100, db_index=True)
    status = models.CharField(max_length=10, choices=LogStatus.choices, db_index=True)
    stripe_request_id = models.CharField(max_length=100, blank=True, db_index=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-id"]
        # Window before customer: a run's new rows go at the end of the index, not into every
        # customer's entries (billing/migrations/0012_window_major_ledger.py).
        indexes = [
            models.Index(fields=["meter", "window_start", "customer"], name="reportlog_window_idx")
        ]

    def __str__(self) -> str:
        return f"{self.identifier} = {self.quantity} ({self.status})"


class ReportedWindow(models.Model):
    """The value Stripe holds for one (meter, Stripe customer, window): the last `sent` ReportLog
    row. Keyed by the Stripe customer it was sent to, because that is what Stripe bills.

    Kept beside the audit trail, in the same transaction, so a run compares against one row per
    window instead of scanning the history.
    """

    # The indexes below begin with the meter or the customer: one of their own would only slow
    # writes.
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="+", db_index=False)
    customer = models.ForeignKey(
        Customer, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    stripe_customer_id = models.CharField(max_length=100)
    window_start = models.DateTimeField()
    value = models.DecimalField(max_digits=32, decimal_places=12)
    sent_count = models.PositiveIntegerField(default=0)
    # A send failed after this value: Stripe may hold something else, so the next run resends.
    needs_resend = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        # Window before customer: a run's new windows are appended at the end of the key's index
        # instead of into every customer's entries (billing/migrations/0012_window_major_ledger.py).
        constraints = [
            models.UniqueConstraint(
                fields=["meter", "window_start", "stripe_customer_id"],
                name="unique_reported_window",
            )
        ]
        indexes = [
            # A run's totals over a range read this index alone (no row lookups): it holds
            # every column they use.
            models.Index(
                fields=["meter", "window_start", "customer", "value", "needs_resend"],
                name="reported_range_totals_idx",
            ),
            # One customer's windows of a meter (its pages, corrections), without the others'.
            models.Index(
                fields=["customer", "meter", "window_start"], name="reported_customer_idx"
            ),
        ]

    def __str__(self) -> str:
        return (
            f"{self.meter_id}/{self.customer_id}@{self.window_start:%Y-%m-%d %H:%M} = {self.value}"
        )


class UnmappedUsage(models.Model):
    """Usage a run found under an OpenMeter subject that no active customer has, per meter."""

    run = models.ForeignKey(ReportRun, on_delete=models.CASCADE, related_name="unmapped_usage")
    meter = models.ForeignKey(Meter, on_delete=models.CASCADE, related_name="+")
    subject = models.CharField(max_length=255)
    quantity = models.DecimalField(max_digits=32, decimal_places=12)

    class Meta:
        verbose_name_plural = "unmapped usage"

    def __str__(self) -> str:
        return f"{self.subject}: {self.quantity} on {self.meter_id}"


class WebhookEvent(models.Model):
    """A Stripe event received at /stripe/webhook/, stored once by its id, processed by a task."""

    class ApiMode(models.TextChoices):
        SNAPSHOT = "snapshot", "Snapshot event"
        THIN = "thin", "Thin event"

    stripe_event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=255, db_index=True)
    api_mode = models.CharField(max_length=10, choices=ApiMode.choices)
    # As received; for a thin event, the full event fetched from Stripe is kept under "event".
    payload = models.JSONField()
    received_at = models.DateTimeField(default=clock.now, db_index=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-received_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.type} {self.stripe_event_id}"


class MeterEventError(models.Model):
    """Stripe rejected meter events after accepting them (asynchronous validation): one row per
    error type and sample, beside the ReportLog row the sample's identifier names."""

    webhook_event = models.ForeignKey(
        WebhookEvent, on_delete=models.PROTECT, related_name="meter_errors"
    )
    meter = models.ForeignKey(
        Meter, null=True, blank=True, on_delete=models.PROTECT, related_name="event_errors"
    )
    event_name = models.CharField(max_length=100, blank=True)
    code = models.CharField(max_length=100)
    message = models.TextField(blank=True)
    count = models.PositiveIntegerField(default=0, help_text="Errors of this type in the window.")
    identifier = models.CharField(max_length=100, blank=True, db_index=True)
    report_log = models.ForeignKey(
        ReportLog, null=True, blank=True, on_delete=models.PROTECT, related_name="rejections"
    )
    validation_start = models.DateTimeField(null=True, blank=True)
    validation_end = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=clock.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name = "meter event rejected by Stripe"
        verbose_name_plural = "meter events rejected by Stripe"

    def __str__(self) -> str:
        return f"{self.code} x{self.count}"


class ReconcileStatus(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class Reconciliation(models.Model):
    """One comparison of Stripe's own totals with the ledger and OpenMeter, window by window."""

    trigger = models.CharField(max_length=10, choices=Trigger.choices)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    # lookback: each meter's own closed windows of RECONCILE_LOOKBACK_HOURS before period_end;
    # period: exactly [period_start, period_end) on every meter.
    mode = models.CharField(max_length=10, choices=RunMode.choices, default=RunMode.LOOKBACK)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    meter_slugs = models.JSONField(default=list, blank=True)  # empty: every reportable meter
    customer_subjects = models.JSONField(default=list, blank=True)
    status = models.CharField(
        max_length=10,
        choices=ReconcileStatus.choices,
        default=ReconcileStatus.RUNNING,
        db_index=True,
    )
    windows_compared = models.PositiveIntegerField(default=0)
    matched = models.PositiveIntegerField(default=0)
    unsent = models.PositiveIntegerField(default=0)
    drift = models.PositiveIntegerField(default=0)
    settling = models.PositiveIntegerField(default=0)
    stripe_requests = models.PositiveIntegerField(default=0)
    # Per meter slug: {"compared", "matched", "unsent", "drift", "settling"}.
    meter_counts = models.JSONField(default=dict, blank=True)
    started_at = models.DateTimeField(default=clock.now, editable=False, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-pk"]

    def __str__(self) -> str:
        return f"Reconciliation #{self.pk} ({self.status})"


class ItemKind(models.TextChoices):
    UNSENT = "unsent", "Unsent (OpenMeter changed since the last send)"
    DRIFT = "drift", "Drift (Stripe differs from what was sent)"
    SETTLING = "settling", "Settling (sent too recently to judge)"


class ReconciliationItem(models.Model):
    """A window where Stripe, the ledger and OpenMeter do not all agree."""

    reconciliation = models.ForeignKey(
        Reconciliation, on_delete=models.CASCADE, related_name="items"
    )
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="+")
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="+")
    window_start = models.DateTimeField()
    openmeter_value = models.DecimalField(max_digits=32, decimal_places=12)
    sent_value = models.DecimalField(null=True, blank=True, max_digits=32, decimal_places=12)
    stripe_value = models.DecimalField(null=True, blank=True, max_digits=32, decimal_places=12)
    kind = models.CharField(max_length=10, choices=ItemKind.choices, db_index=True)

    class Meta:
        ordering = ["meter_id", "customer_id", "window_start"]

    def __str__(self) -> str:
        return f"{self.kind} {self.meter_id}/{self.customer_id}@{self.window_start:%Y-%m-%d %H:%M}"


class PeriodStatus(models.TextChoices):
    OPEN = "open", "Open"
    INVOICING = "invoicing", "Invoicing (draft invoice, usage closed)"
    CLOSED = "closed", "Closed (invoice final)"


class BillingPeriod(models.Model):
    """One billing period of a subscription, as Stripe holds it (its items' current period)."""

    # A (canceled) subscription's row may be deleted; a period with corrections may not (PROTECT
    # on Correction.billing_period keeps the history).
    subscription = models.ForeignKey(
        Subscription, on_delete=models.CASCADE, related_name="billing_periods"
    )
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    status = models.CharField(
        max_length=10, choices=PeriodStatus.choices, default=PeriodStatus.OPEN, db_index=True
    )
    stripe_invoice_id = models.CharField(max_length=100, blank=True)
    invoice_status = models.CharField(max_length=30, blank=True)
    invoice_total = models.BigIntegerField(null=True, blank=True, help_text="In minor units.")
    invoice_currency = models.CharField(max_length=3, blank=True)
    # What closing sent: the report run started by the draft invoice.
    close_run = models.ForeignKey(
        ReportRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    invoicing_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-period_start", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "period_start"], name="unique_billing_period"
            )
        ]

    def __str__(self) -> str:
        return f"{self.subscription_id}: {self.period_start:%Y-%m-%d} to {self.period_end:%Y-%m-%d}"


class CorrectionStatus(models.TextChoices):
    PROPOSED = "proposed", "Proposed"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    BOOKED = "booked", "Booked in Stripe"
    FAILED = "failed", "Booking failed"


class Correction(models.Model):
    """Usage that changed after its period's invoice was final: billed nowhere by a meter event,
    so booked, once approved, as an invoice item on the customer's next invoice."""

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="corrections")
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="corrections")
    billing_period = models.ForeignKey(
        BillingPeriod, on_delete=models.PROTECT, related_name="corrections"
    )
    quantity_before = models.DecimalField(max_digits=32, decimal_places=12)
    quantity_after = models.DecimalField(max_digits=32, decimal_places=12)
    amount = models.DecimalField(
        max_digits=32, decimal_places=12, help_text="In the currency's minor unit."
    )
    currency = models.CharField(max_length=3)
    unit_amount_decimal = models.DecimalField(max_digits=24, decimal_places=12)
    status = models.CharField(
        max_length=10,
        choices=CorrectionStatus.choices,
        default=CorrectionStatus.PROPOSED,
        db_index=True,
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reason = models.TextField(blank=True, help_text="Why it was approved or rejected.")
    stripe_object_id = models.CharField(max_length=100, blank=True)
    error = models.TextField(blank=True)
    detected_by_run = models.ForeignKey(
        ReportRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="corrections"
    )
    created_at = models.DateTimeField(default=clock.now, db_index=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    booked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        permissions = [("approve_correction", "Can approve or reject usage corrections")]

    def __str__(self) -> str:
        return f"Correction #{self.pk} ({self.status})"

    @property
    def quantity(self) -> Decimal:
        return self.quantity_after - self.quantity_before
