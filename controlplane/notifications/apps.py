from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "controlplane.notifications"
    label = "notifications"
    verbose_name = "Notifications"

    def ready(self) -> None:
        from controlplane.notifications import receivers  # noqa: F401  (connects them)
