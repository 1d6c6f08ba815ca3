"""Browser routes of the inference app."""

from __future__ import annotations

from django.urls import path

from inference import playground, views

app_name = "inference"

urlpatterns = [
    path("jobs/", views.job_list, name="job-list"),
    path("jobs/new/", views.job_create, name="job-create"),
    path("jobs/<uuid:job_id>/", views.job_detail, name="job-detail"),
    path("jobs/<uuid:job_id>/<slug:action>/", views.job_action, name="job-action"),
    path("playground/<str:name>/<int:version>/chat/", playground.playground_chat, name="playground-chat"),
]
