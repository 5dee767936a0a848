"""Reconciliation: Stripe's own totals (meter event summaries) beside the ledger (what Meterbridge
sent) and OpenMeter now, window by window. DESIGN.md, "Reconciliation", is the rule; `classify`
holds it, `compare` applies it to one meter, `runs` starts, executes and finishes a check.
"""

from billing.reconcile.runs import (
    ReconcileRequest,
    execute_reconciliation,
    meter_range,
    start_reconciliation,
)

__all__ = ["ReconcileRequest", "execute_reconciliation", "meter_range", "start_reconciliation"]
