"""The ledger's writes touch fewer indexes, and a run's range totals read one index alone.

- The meter's own index on ReportLog and ReportedWindow goes: each table has a composite index
  that begins with the meter. The index is dropped by name; AlterField would copy the whole table
  on SQLite (a ReportLog of millions of rows) for what is one DROP INDEX.
- ReportedWindow's (meter, window_start) index becomes (meter, window_start, customer, value,
  needs_resend): it serves the same queries, and the totals of a range need no row lookups.
"""

import django.db.models.deletion
from django.db import migrations, models

MODELS = ("ReportLog", "ReportedWindow")


def drop_meter_indexes(apps, schema_editor):
    for name in MODELS:
        model = apps.get_model("billing", name)
        column = model._meta.get_field("meter").column
        for index in schema_editor._constraint_names(
            model, [column], index=True, type_=models.Index.suffix
        ):
            schema_editor.execute(schema_editor._delete_index_sql(model, index))


def create_meter_indexes(apps, schema_editor):
    for name in MODELS:
        model = apps.get_model("billing", name)
        field = model._meta.get_field("meter")
        schema_editor.execute(schema_editor._create_index_sql(model, fields=[field]))


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0010_run_parts"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="reportedwindow",
                    name="meter",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="billing.meter",
                    ),
                ),
                migrations.AlterField(
                    model_name="reportlog",
                    name="meter",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="logs",
                        to="billing.meter",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunPython(drop_meter_indexes, create_meter_indexes),
            ],
        ),
        migrations.RemoveIndex(
            model_name="reportedwindow",
            name="reported_meter_window_idx",
        ),
        migrations.AddIndex(
            model_name="reportedwindow",
            index=models.Index(
                fields=["meter", "window_start", "customer", "value", "needs_resend"],
                name="reported_range_totals_idx",
            ),
        ),
    ]
