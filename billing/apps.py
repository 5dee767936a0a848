from django.apps import AppConfig


class BillingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "billing"
    verbose_name = "Billing"

    def ready(self) -> None:
        # Connect the schedule hook and the production settings check.
        from billing import checks, signals  # noqa: F401
