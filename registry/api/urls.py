"""Routes of the registry API (mounted under /api/v1/ in the "api" namespace)."""

from __future__ import annotations

from django.urls import path

from registry.api import access_views, views

models = views.ModelViewSet
versions = views.VersionViewSet
aliases = views.AliasViewSet
M = "models/<str:name>"
V = f"{M}/versions/<int:version>"
A = f"{M}/aliases/<slug:alias>"

urlpatterns = [
    path("models/", models.as_view({"get": "list", "post": "create"}), name="model-list"),
    path(
        f"{M}/",
        models.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}),
        name="model-detail",
    ),
    path(f"{M}/versions/", versions.as_view({"get": "list", "post": "create"}), name="version-list"),
    path(
        f"{V}/",
        versions.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}),
        name="version-detail",
    ),
    path(f"{V}/archive/", versions.as_view({"post": "archive"}), name="version-archive"),
    path(f"{V}/restore/", versions.as_view({"post": "restore"}), name="version-restore"),
    path(f"{V}/validate/", versions.as_view({"post": "validate"}), name="version-validate"),
    path(f"{V}/download/", versions.as_view({"get": "download"}), name="version-download"),
    path(f"{M}/aliases/", aliases.as_view({"get": "list"}), name="alias-list"),
    path(f"{A}/", aliases.as_view({"get": "retrieve", "put": "update", "delete": "destroy"}), name="alias-detail"),
    path(f"{A}/rollback/", aliases.as_view({"post": "rollback"}), name="alias-rollback"),
    path(f"{A}/history/", aliases.as_view({"get": "history"}), name="alias-history"),
    path("audit-events/", views.AuditEventViewSet.as_view({"get": "list"}), name="audit-list"),
    # access control (registry.api.access_views)
    path("audit-events/export/", access_views.AuditExportView.as_view(), name="audit-export"),
    path(f"{A}/at/", access_views.AliasAtView.as_view(), name="alias-at"),
    path(f"{M}/roles/", access_views.RoleListView.as_view(), name="role-list"),
    path(f"{M}/roles/<int:pk>/", access_views.RoleDetailView.as_view(), name="role-detail"),
    path(f"{M}/protected-aliases/", access_views.ProtectedAliasListView.as_view(), name="protected-alias-list"),
    path(f"{M}/protected-aliases/<slug:alias>/", access_views.ProtectedAliasView.as_view(), name="protected-alias"),
    path(f"{M}/promotion-requests/", access_views.PromotionRequestListView.as_view(), name="promotion-list"),
    path(
        f"{M}/promotion-requests/<int:pk>/approve/",
        access_views.PromotionApproveView.as_view(),
        name="promotion-approve",
    ),
    path(
        f"{M}/promotion-requests/<int:pk>/reject/", access_views.PromotionRejectView.as_view(), name="promotion-reject"
    ),
]
