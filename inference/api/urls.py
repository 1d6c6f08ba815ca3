"""Routes of the inference API (mounted under /api/v1/ in the "api" namespace)."""

from __future__ import annotations

from rest_framework.routers import SimpleRouter

from inference.api import views

router = SimpleRouter()
router.register("jobs", views.BatchJobViewSet, basename="job")

urlpatterns = router.urls
