"""URLs of the tenancy API, mounted under /api/v1/."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from controlplane.notifications.api import WebhookViewSet
from controlplane.tenancy.api.secrets import SecretViewSet
from controlplane.tenancy.api.views import MemberViewSet, ProjectViewSet, TokenViewSet

router = SimpleRouter()
router.register("projects", ProjectViewSet, basename="project")
router.register("tokens", TokenViewSet, basename="token")

members = MemberViewSet.as_view({"get": "list", "post": "create"})
member = MemberViewSet.as_view(
    {"get": "retrieve", "put": "update", "patch": "partial_update", "delete": "destroy"}
)

secret_list = SecretViewSet.as_view({"get": "list", "post": "create"})
secret_item = SecretViewSet.as_view(
    {"get": "retrieve", "put": "update", "patch": "partial_update", "delete": "destroy"}
)

webhook_list = WebhookViewSet.as_view({"get": "list", "post": "create"})
webhook_item = WebhookViewSet.as_view({"get": "retrieve", "delete": "destroy"})
webhook_ping = WebhookViewSet.as_view({"post": "ping"})
webhook_deliveries = WebhookViewSet.as_view({"get": "deliveries"})

urlpatterns = [
    *router.urls,
    path("projects/<int:project_pk>/members/", members, name="project-members"),
    path("projects/<int:project_pk>/members/<str:username>/", member, name="project-member"),
    path("projects/<int:project_pk>/secrets/", secret_list, name="project-secrets"),
    path("projects/<int:project_pk>/secrets/<str:name>/", secret_item, name="project-secret"),
    path("projects/<int:project_pk>/webhooks/", webhook_list, name="project-webhooks"),
    path("projects/<int:project_pk>/webhooks/<int:pk>/", webhook_item, name="project-webhook"),
    path("projects/<int:project_pk>/webhooks/<int:pk>/ping/", webhook_ping, name="webhook-ping"),
    path(
        "projects/<int:project_pk>/webhooks/<int:pk>/deliveries/",
        webhook_deliveries,
        name="webhook-deliveries",
    ),
]
