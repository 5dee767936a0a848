"""The reporting engine: what a run covers -> OpenMeter usage -> changed windows -> Stripe.

DESIGN.md, "How usage reaches Stripe", is the algorithm. Stripe's pre-aggregated meters keep only
the latest event per customer and UTC window, so sending a window's complete value *sets* it. A
run compares each window with the value Stripe last accepted (ReportedWindow, written with the
ReportLog rows) and sends only what changed, with a deterministic identifier, so a re-run after a
crash cannot count twice.

Modules: `periods` (what a run covers), `runs` (start, prepare, do a part), `parts` (a run split
into parts any worker takes, finished by its last), `detect` (which windows changed), `recorder`
(send and record), `bulk` (the upserts), `locks` (one run per meter and customer),
`values` (quantities and identifiers); for the admin's re-report: `selection`, `presets`,
`preview`.
"""

from billing.reporting.periods import ReportInputError, validate_period
from billing.reporting.runs import (
    RunAlreadyStarted,
    RunRequest,
    execute_part,
    execute_run,
    fail_abandoned_runs,
    report_usage,
    selected,
    start_run,
)

__all__ = [
    "ReportInputError",
    "RunAlreadyStarted",
    "RunRequest",
    "execute_part",
    "execute_run",
    "fail_abandoned_runs",
    "report_usage",
    "selected",
    "start_run",
    "validate_period",
]
