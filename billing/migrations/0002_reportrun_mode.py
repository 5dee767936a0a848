from django.db import migrations, models


def modes_of_earlier_runs(apps, schema_editor):
    # Scheduled runs covered each meter's lookback; every other run its stored period.
    ReportRun = apps.get_model("billing", "ReportRun")
    ReportRun.objects.filter(trigger="schedule").update(mode="lookback")


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="reportrun",
            name="mode",
            field=models.CharField(
                choices=[
                    ("lookback", "Lookback (each meter's recent closed windows)"),
                    ("period", "Chosen period"),
                ],
                default="period",
                max_length=10,
            ),
        ),
        migrations.RunPython(modes_of_earlier_runs, migrations.RunPython.noop),
    ]
