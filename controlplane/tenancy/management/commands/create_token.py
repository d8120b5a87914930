"""``manage.py create_token USERNAME [--name NAME] [--expires-in-days N]``: print a new token."""

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from controlplane.tenancy import services


class Command(BaseCommand):
    help = "Mint an API token for a user and print it (it is shown only this once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="cli", help="A name to recognise the token by.")
        parser.add_argument("--expires-in-days", type=int, default=None)

    def handle(self, *args, username: str, name: str, expires_in_days: int | None, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"There is no user named {username!r}.")
        if expires_in_days is not None and not 1 <= expires_in_days <= 3650:
            raise CommandError("--expires-in-days must be between 1 and 3650.")
        expires = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
        try:
            _, raw = services.create_token(
                services.Actor(user=None, via="cli"), user, name, expires
            )
        except services.ServiceError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(raw)
