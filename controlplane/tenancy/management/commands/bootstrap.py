"""``manage.py bootstrap``: first-run setup (the admin user and the default project)."""

from django.conf import settings
from django.core.management.base import BaseCommand

from controlplane.tenancy import services


class Command(BaseCommand):
    help = "Create the 'admin' superuser and the 'default' project if they do not exist."

    def handle(self, *args, **options) -> None:
        password = services.bootstrap(settings.ADMIN_PASSWORD or None)
        if password:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Created user 'admin' with password: {password}\n"
                    "(shown only this once; change it in the admin, or set CP_ADMIN_PASSWORD "
                    "before the first run)"
                )
            )
