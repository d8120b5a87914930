"""URLs of the jobs API, mounted under /api/v1/."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from jobs.api.attempt_views import AttemptCheckpointsView, AttemptMetricsView, AttemptView
from jobs.api.output_views import OutputArchiveView, OutputFileView, OutputListView
from jobs.api.views import JobViewSet
from jobs.sweeps.api import SweepViewSet

router = SimpleRouter()
router.register("jobs", JobViewSet, basename="job")
router.register("sweeps", SweepViewSet, basename="sweep")
urlpatterns = [
    path("jobs/<int:job_id>/outputs/", OutputListView.as_view(), name="job-outputs"),
    path("jobs/<int:job_id>/outputs/file/", OutputFileView.as_view(), name="job-output-file"),
    path(
        "jobs/<int:job_id>/outputs/archive/",
        OutputArchiveView.as_view(),
        name="job-outputs-archive",
    ),
    *router.urls,
    path("attempt/", AttemptView.as_view(), name="attempt"),
    path("attempt/metrics/", AttemptMetricsView.as_view(), name="attempt-metrics"),
    path("attempt/checkpoints/", AttemptCheckpointsView.as_view(), name="attempt-checkpoints"),
]
