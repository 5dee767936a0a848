"""python manage.py ensure_roles: create or update the Finance viewer and Finance operator
groups (billing.roles), as every `migrate` does, and say what changed."""

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import DEFAULT_DB_ALIAS

from billing.roles import ensure_roles


class Command(BaseCommand):
    help = "Create or update the Finance viewer and Finance operator groups and their permissions."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS, help="the database to use")

    def handle(self, *args: Any, **options: Any) -> None:
        for change in ensure_roles(using=options["database"]):
            self.stdout.write(str(change))
