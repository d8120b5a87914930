from django.apps import AppConfig


class ClusterConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "controlplane.cluster"
    label = "cluster"
    verbose_name = "Cluster"
