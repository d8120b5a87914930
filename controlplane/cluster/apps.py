from django.apps import AppConfig


class ClusterConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "controlplane.cluster"
    label = "cluster"
    verbose_name = "Cluster"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from controlplane.cluster.sessions import bound_idle_transactions

        connection_created.connect(bound_idle_transactions, dispatch_uid="cp-idle-in-txn")
