from django.apps import AppConfig


class SweepsConfig(AppConfig):
    name = "jobs.sweeps"
    label = "sweeps"
    verbose_name = "Hyperparameter sweeps"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from jobs.sweeps import receivers  # noqa: F401
