"""URL map: pages, admin, probes, the REST API under /api/v1/ and its schema."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import SimpleRouter

from controlplane import project_pages, views
from controlplane.cluster.api import GpuViewSet, WorkerViewSet
from controlplane.notifications import pages as notification_pages
from monitoring import urls as monitoring_urls
from monitoring import views as monitoring_views
from serving import views as serving_views

cluster = SimpleRouter()
cluster.register("workers", WorkerViewSet, basename="worker")
cluster.register("gpus", GpuViewSet, basename="gpu")

api_v1 = [
    *monitoring_urls.api_v1,  # before the routers: gpus/{id}/telemetry/, jobs/{id}/telemetry/
    path("", include("controlplane.tenancy.api.urls")),
    path("", include("jobs.api.urls")),
    path("", include("serving.urls")),
    *cluster.urls,
]

admin.site.site_header = "GPU control plane"
admin.site.site_title = "GPU control plane"

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("jobs/", include("jobs.page_urls")),
    path("sweeps/", include("jobs.sweeps.page_urls")),
    path("projects/", project_pages.project_list, name="project-list-page"),
    path("projects/<int:project_id>/", project_pages.project_detail, name="project-page"),
    path(
        "projects/<int:project_id>/members/",
        project_pages.project_members,
        name="project-members-page",
    ),
    path("projects/<int:project_id>/quotas/", project_pages.project_quotas, name="project-quotas"),
    path(
        "projects/<int:project_id>/webhooks/",
        notification_pages.webhooks,
        name="project-webhooks-page",
    ),
    path("tokens/", project_pages.tokens, name="tokens-page"),
    path("tokens/<int:token_id>/revoke/", project_pages.token_revoke, name="token-revoke"),
    path("models/", serving_views.model_list, name="model-list-page"),
    path("models/new/", serving_views.model_create, name="model-create"),
    path("models/<int:model_id>/upload/", serving_views.version_upload, name="version-upload"),
    path("models/versions/<int:version_id>/deploy/", serving_views.deploy, name="deploy"),
    path(
        "models/versions/<int:version_id>/delete/",
        serving_views.version_delete,
        name="version-delete",
    ),
    path("deployments/", serving_views.deployment_list, name="deployment-list-page"),
    path(
        "deployments/<int:deployment_id>/", serving_views.deployment_detail, name="deployment-page"
    ),
    path(
        "deployments/<int:deployment_id>/action/",
        serving_views.deployment_action,
        name="deployment-action",
    ),
    *monitoring_urls.pages,
    path("metrics", monitoring_views.metrics, name="metrics"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="docs"),
    # Last: any other path under /api/ is a 404 in the API's JSON format, not an HTML page.
    re_path(r"^api/", views.api_not_found),
]

handler400 = "controlplane.views.bad_request"
handler500 = "controlplane.views.server_error"
