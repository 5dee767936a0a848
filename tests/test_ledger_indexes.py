"""The ledger's indexes: window before customer (a run's new rows are appended), the same unique
key, one customer's windows still read without the others', and the migration keeps every row."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

from billing.closing.corrections import held_values
from billing.models import Customer, Meter, ReportedWindow

T0 = datetime(2026, 11, 2, tzinfo=UTC)
BEFORE = [("billing", "0011_leaner_ledger_indexes")]
AFTER = [("billing", "0012_window_major_ledger")]


def _columns(table: str) -> dict[str, list[str]]:
    with connection.cursor() as cursor:
        found = connection.introspection.get_constraints(cursor, table)
    return {
        name: info["columns"] for name, info in found.items() if info["index"] or info["unique"]
    }


def _ledger(meter: Meter, customers: list[Customer], hours: int) -> None:
    ReportedWindow.objects.bulk_create(
        ReportedWindow(
            meter=meter,
            customer=c,
            stripe_customer_id=c.stripe_customer_id,
            window_start=T0 + timedelta(hours=h),
            value=Decimal(i * 100 + h),
            sent_count=1,
        )
        for i, c in enumerate(customers)
        for h in range(hours)
    )


def _customers(n: int) -> list[Customer]:
    return [
        Customer.objects.create(
            name=f"C{i}", openmeter_subject=f"c{i}", stripe_customer_id=f"cus_{i:04d}"
        )
        for i in range(n)
    ]


@pytest.mark.django_db
def test_the_ledgers_indexes_put_the_window_before_the_customer():
    rw = _columns(ReportedWindow._meta.db_table)
    assert rw["unique_reported_window"] == ["meter_id", "window_start", "stripe_customer_id"]
    assert rw["reported_customer_idx"] == ["customer_id", "meter_id", "window_start"]
    assert ["customer_id"] not in rw.values()  # the composite one serves it
    log = _columns("billing_reportlog")
    assert log["reportlog_window_idx"] == ["meter_id", "window_start", "customer_id"]


@pytest.mark.django_db
def test_the_unique_key_still_refuses_a_second_row_for_a_window():
    meter = Meter.objects.create(name="M", openmeter_slug="m", stripe_meter_id="mtr_1")
    [customer] = _customers(1)
    _ledger(meter, [customer], 1)
    with pytest.raises(IntegrityError), transaction.atomic():
        _ledger(meter, [customer], 1)
    assert ReportedWindow.objects.count() == 1


@pytest.mark.django_db
def test_one_customers_held_values_are_read_by_its_own_index():
    meter = Meter.objects.create(name="M", openmeter_slug="m", stripe_meter_id="mtr_1")
    customers = _customers(3)
    _ledger(meter, customers, 5)
    values = held_values(meter=meter, customer=customers[1], start=T0, end=T0 + timedelta(hours=3))
    assert values == {T0 + timedelta(hours=h): Decimal(100 + h) for h in range(3)}
    if connection.vendor != "sqlite":
        return  # PostgreSQL plans by its statistics: a few rows are read by a sequential scan
    rows = ReportedWindow.objects.filter(
        customer_id=customers[1].id, meter=meter, stripe_customer_id="x", window_start__gte=T0
    )
    plan = rows.explain()
    assert "reported_customer_idx" in plan, plan


@pytest.mark.django_db(transaction=True)
def test_the_migration_keeps_every_row_both_ways():
    meter = Meter.objects.create(name="M", openmeter_slug="m", stripe_meter_id="mtr_1")
    customers = _customers(4)
    _ledger(meter, customers, 6)
    rows = set(
        ReportedWindow.objects.values_list(
            "meter_id", "customer_id", "stripe_customer_id", "window_start", "value", "sent_count"
        )
    )
    executor = MigrationExecutor(connection)
    try:
        executor.migrate(BEFORE)
        assert _columns(ReportedWindow._meta.db_table)["unique_reported_window"] == [
            "meter_id",
            "stripe_customer_id",
            "window_start",
        ]
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(AFTER)
    assert _columns(ReportedWindow._meta.db_table)["reported_customer_idx"] == [
        "customer_id",
        "meter_id",
        "window_start",
    ]
    after = set(
        ReportedWindow.objects.values_list(
            "meter_id", "customer_id", "stripe_customer_id", "window_start", "value", "sent_count"
        )
    )
    assert after == rows and len(rows) == 24
