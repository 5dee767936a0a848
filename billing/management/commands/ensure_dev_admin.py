"""Create the local login for the quick start: only with DEBUG on and no superuser yet."""

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "With DEBUG on and no superuser, create 'admin' with the password in DEV_ADMIN_PASSWORD."

    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model()
        if not settings.DEBUG:
            self.stdout.write("DEBUG is off: not creating a development login.")
            return
        if users.objects.filter(is_superuser=True).exists():
            self.stdout.write("A superuser exists already: log in with it.")
            return
        password = settings.DEV_ADMIN_PASSWORD
        users.objects.create_superuser("admin", "admin@example.com", password)
        self.stdout.write(
            f"Created the development login: user 'admin', password '{password}'. "
            "Change it in the admin (or set DEV_ADMIN_PASSWORD before the first start)."
        )
