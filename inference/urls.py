"""Browser routes of the inference app."""

from __future__ import annotations

from django.urls import path

from inference import playground, views
from inference.conversions import views as conversions

app_name = "inference"

urlpatterns = [
    path("jobs/", views.job_list, name="job-list"),
    path("jobs/new/", views.job_create, name="job-create"),
    path("jobs/<uuid:job_id>/", views.job_detail, name="job-detail"),
    path("jobs/<uuid:job_id>/<slug:action>/", views.job_action, name="job-action"),
    path("conversions/", conversions.conversion_list, name="conversion-list"),
    path("conversions/<uuid:run_id>/", conversions.conversion_detail, name="conversion-detail"),
    path("conversions/<uuid:run_id>/<slug:action>/", conversions.conversion_action, name="conversion-action"),
    path("models/<str:name>/versions/<int:version>/convert/", conversions.conversion_start, name="conversion-start"),
    path("playground/<str:name>/<int:version>/chat/", playground.playground_chat, name="playground-chat"),
]
