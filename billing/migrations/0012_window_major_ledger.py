"""The ledger's indexes put the window before the customer, so that a run's new windows are
appended at the end of each index instead of inserted into every customer's entries.

An hourly run writes one row per customer and meter for the newest hour. Ordered (meter, customer,
window), those rows land on as many index pages as there are customers, each read and rewritten;
ordered (meter, window, customer), they fill the last pages in order. As the ledger grows to
millions of rows, the first means a page read per row.

- ReportedWindow's unique key becomes (meter, window_start, stripe_customer_id): the same key, in
  another order (ON CONFLICT names its columns, not their order).
- The customer's own index on ReportedWindow becomes (customer, meter, window_start): what a
  customer's pages and corrections read (one customer's windows of one meter) without scanning
  every customer's windows of a period. Dropped by name, as in 0011.
- ReportLog's (meter, customer, window_start) index becomes (meter, window_start, customer): it
  serves lookups of one window (every column given) as before.

On SQLite, replacing the unique key copies the table (Django rebuilds it, twice): the one-time
cost of this migration grows with the ledger.
"""

import django.db.models.deletion
from django.db import migrations, models


def drop_customer_index(apps, schema_editor):
    model = apps.get_model("billing", "ReportedWindow")
    column = model._meta.get_field("customer").column
    for index in schema_editor._constraint_names(
        model, [column], index=True, type_=models.Index.suffix
    ):
        schema_editor.execute(schema_editor._delete_index_sql(model, index))


def create_customer_index(apps, schema_editor):
    model = apps.get_model("billing", "ReportedWindow")
    field = model._meta.get_field("customer")
    schema_editor.execute(schema_editor._create_index_sql(model, fields=[field]))


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0011_leaner_ledger_indexes"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="reportedwindow",
                    name="customer",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="billing.customer",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunPython(drop_customer_index, create_customer_index),
            ],
        ),
        migrations.AddIndex(
            model_name="reportedwindow",
            index=models.Index(
                fields=["customer", "meter", "window_start"], name="reported_customer_idx"
            ),
        ),
        migrations.RemoveConstraint(
            model_name="reportedwindow",
            name="unique_reported_window",
        ),
        migrations.AddConstraint(
            model_name="reportedwindow",
            constraint=models.UniqueConstraint(
                fields=("meter", "window_start", "stripe_customer_id"),
                name="unique_reported_window",
            ),
        ),
        migrations.RemoveIndex(
            model_name="reportlog",
            name="reportlog_window_idx",
        ),
        migrations.AddIndex(
            model_name="reportlog",
            index=models.Index(
                fields=["meter", "window_start", "customer"], name="reportlog_window_idx"
            ),
        ),
    ]
