"""Browser routes of monitoring."""

from __future__ import annotations

from django.urls import path

from monitoring import views

app_name = "monitoring"
M = "models/<str:name>"

urlpatterns = [
    path("monitoring/", views.dashboard, name="dashboard"),
    path("monitoring/data/", views.dashboard_data, name="dashboard-data"),
    path("usage/", views.usage, name="usage"),
    path(f"{M}/compare/", views.model_compare, name="model-compare"),
    path(f"{M}/charts/", views.model_charts_data, name="model-charts"),
    path(f"{M}/datasets/new/", views.dataset_upload, name="dataset-upload"),
    path(f"{M}/evaluate/", views.evaluation_create, name="evaluation-create"),
    path(f"{M}/gate/", views.gate_update, name="gate-update"),
    path("evaluations/<uuid:run_id>/", views.run_detail, name="run-detail"),
]
