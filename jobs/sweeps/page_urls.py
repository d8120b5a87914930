"""The sweep pages' URLs (mounted at ``/sweeps/`` by controlplane.urls)."""

from django.urls import path

from jobs.sweeps import views

urlpatterns = [
    path("", views.sweep_list, name="sweep-list-page"),
    path("<int:sweep_id>/", views.sweep_detail, name="sweep-page"),
    path("<int:sweep_id>/cancel/", views.sweep_cancel, name="sweep-cancel-page"),
]
