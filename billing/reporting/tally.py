"""A run's counters while it works, written to its ReportRun row as it goes."""

from dataclasses import dataclass, field
from decimal import Decimal

from billing.models import ReportRun, UnmappedUsage
from billing.reporting.values import quantize


@dataclass
class Tally:
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

    def save_to(self, run: ReportRun) -> None:
        """Copy the counters onto `run` and its row (an UPDATE: the run page polls it)."""
        counters = {
            "windows_checked": self.windows_checked,
            "events_sent": self.events_sent,
            "events_unchanged": self.events_unchanged,
            "events_failed": self.events_failed,
            "rate_limited": self.rate_limited,
            "unmapped_subjects": len({subject for _, subject in self.unmapped}),
            "unmapped_quantity": quantize(sum(self.unmapped.values(), Decimal(0))),
        }
        for name, value in counters.items():
            setattr(run, name, value)
        ReportRun.objects.filter(pk=run.pk).update(**counters)

    def save_unmapped(self, run: ReportRun) -> None:
        """Keep which subjects had usage but no customer, per meter (the dashboard lists them)."""
        UnmappedUsage.objects.bulk_create(
            UnmappedUsage(run=run, meter_id=meter_id, subject=subject, quantity=quantize(value))
            for (meter_id, subject), value in self.unmapped.items()
        )
