"""Browser routes of the registry."""

from __future__ import annotations

from django.urls import path

from registry import access_views, views

app_name = "registry"
M = "models/<str:name>"

urlpatterns = [
    path("", views.model_list, name="model-list"),
    path("models/new/", views.model_create, name="model-create"),
    path(f"{M}/", views.model_detail, name="model-detail"),
    path(f"{M}/edit/", views.model_edit, name="model-edit"),
    path(f"{M}/delete/", views.model_delete, name="model-delete"),
    path(f"{M}/upload/", views.version_upload, name="version-upload"),
    path(f"{M}/versions/<int:version>/", views.version_detail, name="version-detail"),
    path(f"{M}/versions/diff/", views.version_diff, name="version-diff"),
    path(f"{M}/versions/<int:version>/edit/", views.version_edit, name="version-edit"),
    path(f"{M}/versions/<int:version>/settings/", views.version_settings, name="version-settings"),
    path(f"{M}/versions/<int:version>/<slug:action>/", views.version_action, name="version-action"),
    path(f"{M}/aliases/", views.alias_set, name="alias-set"),
    path(f"{M}/aliases/<slug:alias>/<slug:action>/", views.alias_action, name="alias-action"),
    path(f"{M}/roles/", access_views.role_grant, name="role-grant"),
    path(f"{M}/roles/<int:role_id>/revoke/", access_views.role_revoke, name="role-revoke"),
    path(f"{M}/promotion-requests/", access_views.promotion_request, name="promotion-request"),
    path(
        f"{M}/promotion-requests/<int:request_id>/<slug:decision>/",
        access_views.promotion_decide,
        name="promotion-decide",
    ),
]
