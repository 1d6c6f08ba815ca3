# ApiToken moved to the `accounts` app; its table stays (accounts 0001 adopts it).
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("portal", "0002_access_control"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="ApiToken")],
            database_operations=[],
        ),
    ]
