"""Reconciliation's judgement of one window (billing.reconcile.classify)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from billing.reconcile.classify import DRIFT, MATCH, SETTLING, UNSENT, classify

NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)
SETTLED = NOW - timedelta(minutes=15)
LONG_AGO = NOW - timedelta(hours=5)


def judge(openmeter: str, sent: str | None, stripe: str, sent_at: datetime | None = LONG_AGO):
    return classify(
        openmeter=Decimal(openmeter),
        sent=None if sent is None else Decimal(sent),
        stripe=Decimal(stripe),
        sent_at=sent_at,
        settled_before=SETTLED,
    )


def test_all_three_agree_is_a_match():
    assert judge("10", "10", "10") == MATCH
    assert judge("0", None, "0", sent_at=None) == MATCH  # nothing anywhere


def test_late_usage_is_unsent_not_drift():
    assert judge("12", "10", "10") == UNSENT
    assert judge("5", None, "0", sent_at=None) == UNSENT  # never sent yet


def test_stripe_differing_from_what_was_sent_is_drift():
    assert judge("10", "10", "0") == DRIFT  # rejected asynchronously
    assert judge("10", "10", "13") == DRIFT  # another event written behind our back
    assert judge("0", None, "4", sent_at=None) == DRIFT  # something else wrote this window
    assert judge("12", "10", "0") == DRIFT  # drift wins over unsent: Stripe is wrong first


def test_a_recent_send_is_settling_not_drift():
    recent = NOW - timedelta(minutes=3)
    assert judge("10", "10", "0", sent_at=recent) == SETTLING
    assert judge("10", "10", "10", sent_at=recent) == MATCH  # already visible: agreed
