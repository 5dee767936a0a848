"""Moving a subject to another customer (or to none, or from none) after usage was reported:
shown first, then re-reported, and kept in the audit (`SubjectMove`).

A customer's window is the usage of the subjects it has now, so a move changes the past windows
of the customer it leaves and of the one it joins. The preview is a dry run of both customers'
windows as if the subject had moved (`ReportRun.assumed_subjects`): old -> new per window, in
money. Applying it changes the mapping and re-reports exactly that period for both, in one run:
the one that loses the usage goes down and the one that gains it goes up, so nothing is billed
twice and nothing is dropped. Windows older than Stripe accepts (35 days) are not re-sent;
`reconcile` shows them against OpenMeter and proposes corrections for closed periods.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction

from billing import clock
from billing.models import (
    Customer,
    CustomerSubject,
    ReportRun,
    SubjectMove,
    Trigger,
)
from billing.reporting.periods import ReportInputError, recent_period
from billing.reporting.preview import Preview, check_current, load_preview
from billing.reporting.runs import RunRequest, execute_run, start_run
from billing.subjects import owner_of

REASON_REQUIRED = "Say why the subject moves: the reason is kept in the audit."


@dataclass(frozen=True)
class Move:
    subject: str
    from_customer: Customer | None
    to_customer: Customer | None

    def describe(self) -> str:
        def name(customer: Customer | None) -> str:
            return customer.name if customer is not None else "no customer"

        return (
            f"subject '{self.subject}' from {name(self.from_customer)} to {name(self.to_customer)}"
        )

    @property
    def customers(self) -> list[Customer]:
        return [c for c in (self.from_customer, self.to_customer) if c is not None]


def plan_move(*, subject: str, to_customer: Customer | None) -> Move:
    """Check a move and say who it is between. Raises ReportInputError with what to do."""
    subject = subject.strip()
    if not subject:
        raise ReportInputError("Name the OpenMeter subject to move.")
    current = owner_of(subject)
    if current is not None and current.openmeter_subject == subject:
        raise ReportInputError(
            f"'{subject}' is the own subject of customer {current.name}, which identifies it in "
            "Stripe's history: it cannot move. Move its other subjects, or create a new customer."
        )
    if to_customer is None and current is None:
        raise ReportInputError(f"'{subject}' is not billed to any customer: nothing to remove.")
    if to_customer is not None and current is not None and current.pk == to_customer.pk:
        raise ReportInputError(f"'{subject}' is already billed to {to_customer.name}.")
    for customer in (current, to_customer):
        if customer is None:
            continue
        reason = customer.reportable_reason()
        if reason is not None:
            instead = (
                "Fix that first."
                if customer.identity_locked()
                else "It has no usage in Stripe yet: edit its other subjects on its page instead."
            )
            raise ReportInputError(
                f"Customer {customer.name} cannot be re-reported ({reason}), so its windows "
                f"could not follow the move. {instead}"
            )
    return Move(subject=subject, from_customer=current, to_customer=to_customer)


def preview_move(
    *, move: Move, requested_by: Any, reason: str, trigger: str, now: datetime | None = None
) -> Preview:
    """Dry-run both customers' windows as if the subject had moved. Raises ReportInputError."""
    reason = reason.strip()
    if not reason:
        raise ReportInputError(REASON_REQUIRED)
    now = now or clock.now()
    start, end = recent_period(now=now)
    to_pk = move.to_customer.pk if move.to_customer is not None else None
    run = start_run(
        RunRequest(
            trigger=trigger,
            start=start,
            end=end,
            customers=move.customers,
            dry_run=True,
            requested_by=requested_by,
            reason=f"Preview of moving {move.describe()}: {reason}",
            assumed_subjects={move.subject: to_pk},
        ),
        now=now,
    )
    execute_run(run)
    return load_preview(run=run)


def apply_move(
    *, preview_run: ReportRun, requested_by: Any, reason: str, now: datetime | None = None
) -> SubjectMove:
    """Make the previewed move and start its re-report run (returned as `SubjectMove.run`, not
    yet executed: the caller runs or queues it). Raises ReportInputError."""
    now = now or clock.now()
    move = _previewed_move(preview_run, requested_by=requested_by, now=now)
    with transaction.atomic():
        CustomerSubject.objects.filter(subject=move.subject).delete()
        if move.to_customer is not None:
            CustomerSubject.objects.create(customer=move.to_customer, subject=move.subject)
        run = start_run(
            RunRequest(
                trigger=preview_run.trigger,
                start=preview_run.period_start,
                end=preview_run.period_end,
                customers=move.customers,
                requested_by=requested_by,
                reason=f"Moved {move.describe()}: {reason.strip()}",
            ),
            now=now,
        )
        return SubjectMove.objects.create(
            subject=move.subject,
            from_customer=move.from_customer,
            to_customer=move.to_customer,
            reason=reason.strip(),
            moved_by=requested_by if getattr(requested_by, "pk", None) else None,
            moved_at=now,
            preview_run=preview_run,
            run=run,
        )


def move_subject(
    *,
    subject: str,
    to_customer: Customer | None,
    reason: str,
    requested_by: Any = None,
    now: datetime | None = None,
) -> tuple[Preview, SubjectMove | None]:
    """Preview, move and re-report in this process (the command's path). The move is made only
    when the preview completed; the SubjectMove's run is executed before returning."""
    move = plan_move(subject=subject, to_customer=to_customer)
    preview = preview_move(
        move=move, requested_by=requested_by, reason=reason, trigger=Trigger.COMMAND, now=now
    )
    if not preview.complete:
        return preview, None
    done = apply_move(preview_run=preview.run, requested_by=requested_by, reason=reason, now=now)
    if done.run is not None:
        execute_run(done.run)
    return preview, done


def _previewed_move(preview_run: ReportRun, *, requested_by: Any, now: datetime) -> Move:
    """The move a preview showed, if it may still be made as shown."""
    assumed = preview_run.assumed_subjects or {}
    if not preview_run.dry_run or len(assumed) != 1:
        raise ReportInputError("That run is not the preview of a subject move: preview again.")
    if preview_run.requested_by_id != getattr(requested_by, "pk", None):
        raise ReportInputError("That preview is not yours to confirm: preview again.")
    check_current(preview_run, now=now)
    if SubjectMove.objects.filter(preview_run=preview_run).exists():
        raise ReportInputError("This move was already made.")
    ((subject, to_pk),) = assumed.items()
    to_customer = Customer.objects.filter(pk=to_pk).first() if to_pk is not None else None
    move = plan_move(subject=subject, to_customer=to_customer)
    previewed = set(preview_run.customer_subjects)
    if {c.openmeter_subject for c in move.customers} != previewed:
        raise ReportInputError(
            f"The subject's customer changed since the preview: preview {move.describe()} again."
        )
    return move
