# ApiToken moved here from the `portal` app. State only: the table `portal_apitoken` (and its
# allowed-models table) already exists, created by portal's migrations 0001 and 0002.
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("portal", "0002_access_control"),
        ("registry", "0002_serving"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name="ApiToken",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("name", models.CharField(max_length=100)),
                        ("prefix", models.CharField(editable=False, max_length=8, unique=True)),
                        ("secret_hash", models.CharField(editable=False, max_length=64)),
                        ("scopes", models.JSONField(blank=True, default=list)),
                        ("rate_limit_per_minute", models.PositiveIntegerField(blank=True, null=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("expires_at", models.DateTimeField(blank=True, null=True)),
                        ("last_used_at", models.DateTimeField(blank=True, null=True)),
                        ("revoked_at", models.DateTimeField(blank=True, null=True)),
                        (
                            "user",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="api_tokens",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                        (
                            "allowed_models",
                            models.ManyToManyField(blank=True, related_name="+", to="registry.registeredmodel"),
                        ),
                    ],
                    options={
                        "db_table": "portal_apitoken",
                        "ordering": ["-created_at"],
                        "constraints": [
                            models.UniqueConstraint(fields=("user", "name"), name="unique_token_name_per_user")
                        ],
                    },
                ),
            ],
        ),
    ]
