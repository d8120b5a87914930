from django.apps import AppConfig


class ServingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "serving"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_delete, post_save

        from controlplane.tenancy.models import ApiToken, Membership
        from jobs.signals import attempt_finished, job_succeeded, node_ready
        from monitoring import attribution
        from serving import receivers
        from serving.deployments import energy

        attribution.annotate(energy.annotate)
        job_succeeded.connect(receivers.register_final_model, dispatch_uid="serving-register")
        node_ready.connect(receivers.replica_changed, dispatch_uid="serving-replica-ready")
        attempt_finished.connect(receivers.replica_changed, dispatch_uid="serving-replica-ended")
        for model in (ApiToken, Membership, get_user_model()):
            post_save.connect(receivers.auth_changed, sender=model, dispatch_uid=f"gw-{model}")
            post_delete.connect(receivers.auth_changed, sender=model, dispatch_uid=f"gw-d-{model}")
