"""Give a user a TOTP authenticator for the admin's second factor (ADMIN_REQUIRE_2FA)."""

from base64 import b32encode
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django_otp.plugins.otp_totp.models import TOTPDevice


class Command(BaseCommand):
    help = (
        "Create a confirmed TOTP device for USERNAME and print its otpauth:// URL and base32 "
        "secret, to add to an authenticator app."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="authenticator", help="the device's name")
        parser.add_argument(
            "--replace",
            action="store_true",
            help="delete the user's TOTP devices first (a lost or new phone)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model()
        username = options["username"]
        try:
            user = users.objects.get(**{users.USERNAME_FIELD: username})
        except users.DoesNotExist:
            raise CommandError(f"No user {username!r}.") from None
        with transaction.atomic():
            existing = TOTPDevice.objects.filter(user=user)
            if existing.exists() and not options["replace"]:
                raise CommandError(
                    f"{username} has a TOTP device already: pass --replace to replace it "
                    "(the old one's codes stop working)."
                )
            existing.delete()
            device = TOTPDevice.objects.create(user=user, name=options["name"], confirmed=True)
        secret = b32encode(device.bin_key).decode()
        self.stdout.write(
            f"Created the TOTP device {device.name!r} for {username}. Add it to an authenticator "
            "app: scan a QR code of this URL, or type in the secret.\n"
            f"  URL:    {device.config_url}\n"
            f"  Secret: {secret}  (base32; shown only now: whoever has it can make codes)\n"
            "Then log in to the admin with username, password and the app's 6-digit code."
        )
        if not user.is_staff:
            self.stdout.write(self.style.WARNING(f"{username} is not staff: no admin access."))
        if not settings.ADMIN_REQUIRE_2FA:
            self.stdout.write(
                self.style.WARNING(
                    "ADMIN_REQUIRE_2FA is off: the admin asks for the code once it is on."
                )
            )
