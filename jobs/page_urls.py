"""The jobs pages' URLs (mounted at ``/jobs/`` by controlplane.urls)."""

from django.urls import path

from jobs import page_actions, views

urlpatterns = [
    path("", views.job_list, name="job-list-page"),
    path("new/", page_actions.job_submit, name="job-submit"),
    path("compare/", views.job_compare, name="job-compare"),
    path("<int:job_id>/", views.job_detail, name="job-page"),
    path("<int:job_id>/row/", views.job_row, name="job-row"),
    path("<int:job_id>/attempts/", views.job_attempts, name="job-attempts-page"),
    path("<int:job_id>/log.txt", views.job_log, name="job-log"),
    path("<int:job_id>/cancel/", page_actions.job_cancel, name="job-cancel-page"),
    path("<int:job_id>/resubmit/", page_actions.job_resubmit, name="job-resubmit-page"),
    path("<int:job_id>/register/", page_actions.register_checkpoint, name="job-register"),
]
