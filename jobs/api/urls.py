"""URLs of the jobs API, mounted under /api/v1/."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from jobs.api.attempt_views import AttemptCheckpointsView, AttemptMetricsView, AttemptView
from jobs.api.views import JobViewSet

router = SimpleRouter()
router.register("jobs", JobViewSet, basename="job")
urlpatterns = [
    *router.urls,
    path("attempt/", AttemptView.as_view(), name="attempt"),
    path("attempt/metrics/", AttemptMetricsView.as_view(), name="attempt-metrics"),
    path("attempt/checkpoints/", AttemptCheckpointsView.as_view(), name="attempt-checkpoints"),
]
