"""Pages and API routes of the monitoring app (included by controlplane.urls)."""

from django.urls import path

from monitoring import api, views

pages = [
    path("telemetry/", views.cluster_page, name="telemetry-cluster"),
    path("telemetry/hosts/<int:worker_id>/", views.host_page, name="telemetry-host"),
    path("telemetry/gpus/<int:gpu_id>/", views.gpu_page, name="telemetry-gpu"),
]

api_v1 = [
    path("telemetry/", api.LatestTelemetryView.as_view(), name="telemetry-latest"),
    path(
        "telemetry/history/", api.ClusterTelemetryView.as_view(), name="telemetry-cluster-history"
    ),
    path("gpus/<int:gpu_id>/telemetry/", api.GpuTelemetryView.as_view(), name="gpu-telemetry"),
    path(
        "workers/<int:worker_id>/telemetry/",
        api.WorkerTelemetryView.as_view(),
        name="worker-telemetry",
    ),
    path("jobs/<int:job_id>/telemetry/", api.JobTelemetryView.as_view(), name="job-telemetry"),
]
