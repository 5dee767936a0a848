"""The billing cycle of FakeStripe's subscriptions (a mixin): periods that end, the draft invoice
each ending period leaves, and its finalization after the grace period.

- :meth:`advance_subscription` ends a subscription's current period now ("close period now"):
  it stores a draft invoice (``billing_reason`` ``subscription_cycle``) for the period that
  ended, moves each item's period on by one interval, and emits ``customer.subscription.updated``
  then ``invoice.created``. With ``cancel_at_period_end`` the subscription is canceled instead of
  moved on (``customer.subscription.deleted``).
- :meth:`advance_due_subscriptions` does that for every period that has ended by ``clock``.
- :meth:`finalize_due_invoices` finalizes the drafts whose ``automatically_finalizes_at``
  (creation + ``invoice_grace_seconds``, default 3600 as Stripe's hour) has passed by ``clock``.
- :meth:`run_billing_every` calls both on a daemon thread (the CLI's ``--billing-seconds``).

A new subscription gets its first invoice at once (``subscription_create``): metered prices bill
nothing in advance, so it holds only pending invoice items, and is paid when it comes to 0.
"""

from __future__ import annotations

import threading

from .common import ApiError, Json, run_every
from .periods import period_holding


class _Cycle:
    """Advancing periods and finalizing drafts; state lives on :class:`FakeStripe`."""

    invoice_grace_seconds: float
    _billing_timer: threading.Event | None

    def _subscription_opened(self, sub: Json) -> None:
        """Emit a new subscription's events and give it its first invoice, finalized."""
        inv = self._new_invoice(sub, "subscription_create", sub["created"], sub["created"], [])
        sub["latest_invoice"] = inv["id"]
        self.emit_event("customer.subscription.created", sub)
        self.emit_event("invoice.created", inv)
        self._finalize(inv)

    def advance_subscription(self, subscription_id: str) -> Json:
        """End the subscription's current period now; return the draft invoice of that period.
        Raises :class:`ApiError` (404 unknown, 400 canceled)."""
        with self._lock:
            sub = self.objects["subscription"].get(subscription_id)
            if sub is None:
                raise ApiError(
                    404, f"No such subscription: '{subscription_id}'", code="resource_missing"
                )
            if sub["status"] == "canceled":
                raise ApiError(400, f"The subscription {subscription_id} is canceled.")
            return self._advance(sub)

    def advance_all_subscriptions(self) -> list[Json]:
        """End the current period of every subscription that is not canceled."""
        with self._lock:
            subs = [s for s in self.objects["subscription"].values() if s["status"] != "canceled"]
            return [self._advance(sub) for sub in subs]

    def advance_due_subscriptions(self) -> list[Json]:
        """End every period that has ended by ``clock`` (several per subscription if need be)."""
        with self._lock:
            now, drafted = self._now(), []
            for sub in list(self.objects["subscription"].values()):
                while sub["status"] != "canceled" and self._current_period(sub)[1] <= now:
                    drafted.append(self._advance(sub))
            return drafted

    def _advance(self, sub: Json) -> Json:
        before = self._sub_copy(sub)
        items = sub["items"]["data"]
        start = min(si["current_period_start"] for si in items)
        end = max(si["current_period_end"] for si in items)
        inv = self._new_invoice(sub, "subscription_cycle", start, end, self._spans(sub))
        sub["latest_invoice"] = inv["id"]
        if sub.get("cancel_at_period_end"):
            self.emit_event("invoice.created", inv)
            self._cancel(sub, {}, "cancellation_requested")
            return inv
        for si in items:
            ended = si["current_period_end"]
            si["current_period_start"] = ended
            si["current_period_end"] = period_holding(sub, si["price"]["recurring"], ended)[1]
        self._sub_changed(sub, before)
        self.emit_event("invoice.created", inv)
        return inv

    def finalize_due_invoices(self) -> list[Json]:
        """Finalize the drafts (with ``auto_advance``) whose grace period has passed."""
        with self._lock:
            now = self._now()
            due = [
                inv
                for inv in self.objects["invoice"].values()
                if inv["status"] == "draft"
                and inv["auto_advance"]
                and inv["automatically_finalizes_at"] is not None
                and inv["automatically_finalizes_at"] <= now
            ]
            return [self._finalize(inv) for inv in due]

    def run_billing_every(self, seconds: float | None) -> None:
        """Call :meth:`advance_due_subscriptions` and :meth:`finalize_due_invoices` every
        ``seconds`` on a daemon thread; None or 0 stops it, and so does :meth:`stop`."""

        def bill() -> None:
            self.advance_due_subscriptions()
            self.finalize_due_invoices()

        run_every(self, "_billing_timer", seconds, bill, name="fake-stripe-billing")
