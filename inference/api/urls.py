"""Routes of the inference API (mounted under /api/v1/ in the "api" namespace)."""

from __future__ import annotations

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
