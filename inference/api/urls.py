"""Routes of the inference API (mounted under /api/v1/ in the "api" namespace)."""

from __future__ import annotations

from django.urls import path
from rest_framework.routers import SimpleRouter

from inference.api import conversions, views

router = SimpleRouter()
router.register("jobs", views.BatchJobViewSet, basename="job")
router.register("conversions", conversions.ConversionViewSet, basename="conversion")

V = "models/<str:name>/versions/<int:version>"

urlpatterns = [
    *router.urls,
    path(f"{V}/conversions/", conversions.VersionConversionsView.as_view(), name="version-conversions"),
    path(f"{V}/lineage/", conversions.VersionLineageView.as_view(), name="version-lineage"),
]
