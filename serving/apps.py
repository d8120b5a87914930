from django.apps import AppConfig


class ServingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "serving"

    def ready(self) -> None:
        from jobs.signals import job_succeeded
        from serving import receivers

        job_succeeded.connect(receivers.register_final_model, dispatch_uid="serving-register")
