"""A run part's counters while it works, written to its RunPart row as it goes, and the run's
sums of them (the run page polls the run)."""

from dataclasses import dataclass, field
from decimal import Decimal

from django.db import transaction
from django.db.models import IntegerField, OuterRef, Subquery, Sum
from django.db.models.functions import Coalesce

from billing.models import ReportRun, RunPart, UnmappedUsage
from billing.reporting.values import quantize

COUNTERS = ("windows_checked", "events_sent", "events_unchanged", "events_failed", "rate_limited")


@dataclass
class Tally:
    part: RunPart | None = None  # where the counters are written; None: kept in memory only
    windows_checked: int = 0
    events_sent: int = 0
    events_unchanged: int = 0
    events_failed: int = 0
    rate_limited: int = 0  # Stripe 429s the senders waited out (or gave up on)
    unmapped: dict[tuple[int, str], Decimal] = field(default_factory=dict)  # (meter, subject)
    errors: list[str] = field(default_factory=list)

    def add_unmapped(self, *, meter_id: int, subject: str, value: Decimal) -> None:
        key = (meter_id, subject)
        self.unmapped[key] = self.unmapped.get(key, Decimal(0)) + value

    def save(self) -> None:
        """Write the counters to the part's row, and the run's sums to the run's."""
        if self.part is None:
            return
        counters = {name: getattr(self, name) for name in COUNTERS}
        RunPart.objects.filter(pk=self.part.pk).update(**counters)
        # After the commit: the run's row is every part's, and a part writing its results must
        # not hold it while other processes' parts wait to write theirs.
        run_id = self.part.run_id
        transaction.on_commit(lambda: sum_parts(run_id=run_id))

    def save_unmapped(self) -> None:
        """Keep which subjects had usage but no customer, per meter (the dashboard lists them)."""
        if self.part is None:
            return
        UnmappedUsage.objects.bulk_create(
            UnmappedUsage(
                run_id=self.part.run_id,
                meter_id=meter_id,
                subject=subject,
                quantity=quantize(value),
            )
            for (meter_id, subject), value in self.unmapped.items()
        )


def sum_parts(*, run_id: int) -> None:
    """Set the run's counters to the sums over its parts, in one statement (parts of other
    processes write theirs concurrently)."""
    sums = {
        name: Coalesce(
            Subquery(
                RunPart.objects.filter(run=OuterRef("pk"))
                .values("run")
                .annotate(total=Sum(name))
                .values("total"),
                output_field=IntegerField(),
            ),
            0,
        )
        for name in COUNTERS
    }
    ReportRun.objects.filter(pk=run_id).update(**sums)


def sum_unmapped(run: ReportRun) -> None:
    """The run's unmapped counters from the UnmappedUsage rows its parts kept."""
    rows = UnmappedUsage.objects.filter(run=run)
    run.unmapped_subjects = rows.values("subject").distinct().count()
    run.unmapped_quantity = quantize(rows.aggregate(total=Sum("quantity"))["total"] or Decimal(0))
    ReportRun.objects.filter(pk=run.pk).update(
        unmapped_subjects=run.unmapped_subjects, unmapped_quantity=run.unmapped_quantity
    )
