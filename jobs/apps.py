from django.apps import AppConfig


class JobsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "jobs"

    def ready(self) -> None:
        from controlplane.cluster import usage
        from jobs.usage import job_usage

        usage.register(job_usage)
