"""Routes of the monitoring API (mounted under /api/v1/ in the "api" namespace)."""

from __future__ import annotations

from django.urls import path

from monitoring.api import views

M = "models/<str:name>"

urlpatterns = [
    path(f"{M}/stats/", views.StatsView.as_view(), name="model-stats"),
    path(f"{M}/versions/<int:version>/stats/", views.VersionStatsView.as_view(), name="version-stats"),
    path(f"{M}/datasets/", views.DatasetListView.as_view(), name="dataset-list"),
    path(f"{M}/datasets/<str:dataset>/", views.DatasetDetailView.as_view(), name="dataset-detail"),
    path(f"{M}/gate/", views.GateView.as_view(), name="model-gate"),
    path("usage/", views.UsageView.as_view(), name="usage"),
    path("usage/csv/", views.UsageCsvView.as_view(), name="usage-csv"),
    path("evaluations/", views.RunListView.as_view(), name="evaluation-list"),
    path("evaluations/<str:run_id>/", views.RunDetailView.as_view(), name="evaluation-detail"),
]
