from django.db import migrations, models
from django.db.models import OuterRef, Subquery

import billing.clock


def identities_of_earlier_rows(apps, schema_editor):
    # Until now a row was sent with its customer's and meter's current ids: record them.
    Customer = apps.get_model("billing", "Customer")
    Meter = apps.get_model("billing", "Meter")
    ReportLog = apps.get_model("billing", "ReportLog")
    ReportedWindow = apps.get_model("billing", "ReportedWindow")
    stripe_id = Subquery(
        Customer.objects.filter(pk=OuterRef("customer_id")).values("stripe_customer_id")[:1]
    )
    event_name = Subquery(Meter.objects.filter(pk=OuterRef("meter_id")).values("event_name")[:1])
    ReportLog.objects.update(stripe_customer_id=stripe_id, event_name=event_name)
    ReportedWindow.objects.update(stripe_customer_id=stripe_id)


class Migration(migrations.Migration):
    dependencies = [("billing", "0002_reportrun_mode")]

    operations = [
        migrations.AddField(
            model_name="reportrun",
            name="reason",
            field=models.TextField(blank=True, help_text="Why the period was reported again."),
        ),
        migrations.AddField(
            model_name="reportrun",
            name="rate_limited",
            field=models.PositiveIntegerField(
                default=0, help_text="Stripe answers 429 (too many requests) the run waited out."
            ),
        ),
        migrations.AddField(
            model_name="reportlog",
            name="stripe_customer_id",
            field=models.CharField(blank=True, max_length=100, verbose_name="Stripe customer id"),
        ),
        migrations.AddField(
            model_name="reportlog",
            name="event_name",
            field=models.CharField(blank=True, max_length=100),
        ),
        migrations.AddField(
            model_name="reportedwindow",
            name="stripe_customer_id",
            field=models.CharField(default="", max_length=100),
            preserve_default=False,
        ),
        migrations.AlterField(
            model_name="reportrun",
            name="started_at",
            field=models.DateTimeField(
                db_index=True, default=billing.clock.now, editable=False
            ),
        ),
        migrations.AlterModelOptions(
            name="reportrun",
            options={
                "ordering": ["-started_at", "-pk"],
                "permissions": [("rereport_usage", "Can re-report usage to Stripe")],
            },
        ),
        migrations.RunPython(identities_of_earlier_rows, migrations.RunPython.noop),
        migrations.RemoveConstraint(model_name="reportedwindow", name="unique_reported_window"),
        migrations.AddConstraint(
            model_name="reportedwindow",
            constraint=models.UniqueConstraint(
                fields=("meter", "stripe_customer_id", "window_start"),
                name="unique_reported_window",
            ),
        ),
    ]
