"""The finance dashboard (the admin's home page): is reporting running, what needs a person.

Every number comes with the address of the list that shows its rows. Bounded queries only: the
page must stay fast with millions of ReportLog rows."""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.db.models import Exists, OuterRef
from django.urls import reverse
from django_q.models import Schedule

from billing import clock
from billing.models import (
    BillingPeriod,
    Correction,
    CorrectionStatus,
    Customer,
    CustomerSubject,
    LogStatus,
    Meter,
    MeterEventError,
    PeriodStatus,
    PriceMapping,
    Reconciliation,
    ReportLog,
    ReportRun,
    RunStatus,
    StripeSynced,
    Subscription,
    SyncStatus,
    Trigger,
    UnmappedUsage,
)
from billing.pricing import Amounts, PriceBook
from billing.reporting.summary import MeterChange, value_changes
from billing.schedule import SCHEDULE_NAME
from billing.stripe_rejections import recent

FAILED_WINDOWS_DAYS = 35  # Stripe takes meter events this far back: older ones cannot be resent
SYNCED_MODELS: tuple[type[StripeSynced], ...] = (Meter, Customer, PriceMapping, Subscription)


@dataclass(frozen=True, kw_only=True)
class Count:
    label: str
    count: int
    url: str


@dataclass
class UnmappedSubject:
    subject: str
    quantities: list[tuple[Meter, Decimal]] = field(default_factory=list)
    value: Amounts = field(default_factory=Amounts)


@dataclass(frozen=True, kw_only=True)
class Dashboard:
    last_run: ReportRun | None
    last_run_url: str
    last_run_changes: list[MeterChange]
    next_run: datetime | None
    runs_url: str
    failed_syncs: list[Count]
    failed_windows: Count
    rejected: Count
    last_reconciliation: Reconciliation | None
    closing: list[Count]
    unmapped: list[UnmappedSubject]
    unmapped_run: ReportRun | None


def _changelist(model: type, query: str = "") -> str:
    meta = model._meta  # type: ignore[attr-defined]
    url = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
    return f"{url}?{query}" if query else url


def build() -> Dashboard:
    last_run = ReportRun.objects.filter(trigger=Trigger.SCHEDULE, dry_run=False).first()
    unmapped, unmapped_run = unmapped_usage()
    return Dashboard(
        last_run=last_run,
        last_run_url=(
            reverse("admin:billing_reportrun_change", args=[last_run.pk]) if last_run else ""
        ),
        last_run_changes=value_changes(run=last_run) if last_run and last_run.finished_at else [],
        next_run=Schedule.objects.filter(name=SCHEDULE_NAME)
        .values_list("next_run", flat=True)
        .order_by("pk")
        .first(),
        runs_url=_changelist(ReportRun, f"trigger__exact={Trigger.SCHEDULE}"),
        failed_syncs=failed_syncs(),
        failed_windows=failed_windows(now=clock.now()),
        rejected=Count(
            label="Meter events rejected by Stripe (35 days)",
            count=recent(now=clock.now()).count(),
            url=_changelist(MeterEventError),
        ),
        last_reconciliation=Reconciliation.objects.filter(finished_at__isnull=False).first(),
        closing=closing(),
        unmapped=unmapped,
        unmapped_run=unmapped_run,
    )


def failed_syncs() -> list[Count]:
    """Rows whose last sync to Stripe failed, per model (not billed until synced)."""
    return [
        Count(
            label=str(model._meta.verbose_name_plural).capitalize(),
            count=model.objects.filter(sync_status=SyncStatus.FAILED).count(),  # type: ignore[attr-defined]
            url=_changelist(model, "sync_status__exact=failed"),
        )
        for model in SYNCED_MODELS
    ]


def closing() -> list[Count]:
    """Periods whose draft invoice is waiting for usage that did not go out, and usage that
    arrived after an invoice was final (corrections waiting for a decision)."""
    invoicing = BillingPeriod.objects.filter(status=PeriodStatus.INVOICING).exclude(
        close_run__status=RunStatus.SUCCEEDED
    )
    return [
        Count(
            label="Invoices about to finalize whose period close did not succeed",
            count=invoicing.count(),
            url=_changelist(BillingPeriod, f"status__exact={PeriodStatus.INVOICING}"),
        ),
        Count(
            label="Usage after a final invoice: corrections waiting for approval",
            count=Correction.objects.filter(status=CorrectionStatus.PROPOSED).count(),
            url=_changelist(Correction, f"status__exact={CorrectionStatus.PROPOSED}"),
        ),
    ]


def failed_windows(*, now: datetime) -> Count:
    """Windows whose last send failed and that no later send delivered (the next run retries
    them), over Stripe's 35 days."""
    later_sent = ReportLog.objects.filter(
        meter=OuterRef("meter"),
        customer=OuterRef("customer"),
        window_start=OuterRef("window_start"),
        status=LogStatus.SENT,
        pk__gt=OuterRef("pk"),
    )
    failed = (
        ReportLog.objects.filter(
            status=LogStatus.FAILED, created_at__gte=now - timedelta(days=FAILED_WINDOWS_DAYS)
        )
        .exclude(Exists(later_sent))
        .values("meter", "customer", "window_start")
        .distinct()
    )
    return Count(
        label="Windows that failed to send",
        count=failed.count(),
        url=_changelist(ReportLog, f"status__exact={LogStatus.FAILED}"),
    )


def unmapped_usage() -> tuple[list[UnmappedSubject], ReportRun | None]:
    """Subjects with usage but no customer, as the last finished lookback run found them
    (subjects that got a customer since are left out), with the usage's value at each meter's
    price."""
    run = (
        ReportRun.objects.filter(
            dry_run=False, mode="lookback", finished_at__isnull=False, customer_subjects=[]
        )
        .order_by("-started_at", "-pk")
        .first()
    )
    if run is None:
        return [], None
    rows = UnmappedUsage.objects.filter(run=run).select_related("meter")
    mapped = set(
        Customer.objects.filter(openmeter_subject__in=rows.values("subject")).values_list(
            "openmeter_subject", flat=True
        )
    ) | set(
        CustomerSubject.objects.filter(subject__in=rows.values("subject")).values_list(
            "subject", flat=True
        )
    )
    prices = PriceBook.load(customer_ids=[])
    by_subject: dict[str, UnmappedSubject] = defaultdict(lambda: UnmappedSubject(""))
    for row in rows.order_by("subject", "meter__name"):
        if row.subject in mapped:
            continue
        item = by_subject[row.subject]
        item.subject = row.subject
        item.quantities.append((row.meter, row.quantity))
        item.value += prices.value(quantity=row.quantity, meter_id=row.meter_id)
    return list(by_subject.values()), run
