# Issue 9, guard rails: the price history is protected (a price with archived prices cannot be
# deleted). The Finance viewer and Finance operator groups are kept by billing.roles after every
# migrate (billing.signals), not by a data migration: they need every app's permissions.
import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("billing", "0003_identity_reason_rate_limited")]

    operations = [
        migrations.AlterField(
            model_name="archivedprice",
            name="price_mapping",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT,
                related_name="archived_prices",
                to="billing.pricemapping",
            ),
        ),
    ]
