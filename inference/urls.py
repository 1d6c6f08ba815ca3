"""Browser routes of the inference app."""

from __future__ import annotations

from django.urls import URLPattern

app_name = "inference"
urlpatterns: list[URLPattern] = []
