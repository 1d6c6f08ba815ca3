"""URL map: browser pages, the REST API under /api/v1/, its schema and docs, the admin."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponsePermanentRedirect, JsonResponse
from django.templatetags.static import static
from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from accounts import views as token_views
from accounts.login_throttle import ThrottledLoginView
from inference.api.predict import PredictView
from monitoring import views as monitoring_views


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness of the web process (no dependencies checked)."""
    return JsonResponse({"status": "ok"})


def favicon(request: HttpRequest) -> HttpResponsePermanentRedirect:
    """The icon for pages without a <link rel="icon"> (/metrics, JSON answers), which browsers ask at /favicon.ico."""
    return HttpResponsePermanentRedirect(static("portal/favicon.svg"))


api_patterns: list[URLPattern | URLResolver] = [
    path("", include("registry.api.urls")),
    path("", include("inference.api.urls")),
    path("", include("monitoring.api.urls")),
    path("models/<str:name>/predict/", PredictView.as_view(), name="model-predict"),
    path("tokens/", token_views.TokenViewSet.as_view({"get": "list", "post": "create"}), name="token-list"),
    path("tokens/<int:pk>/", token_views.TokenViewSet.as_view({"delete": "destroy"}), name="token-detail"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="api:schema"), name="docs"),
]

# Errors escaping a view or a middleware: a database outage answers 503 (JSON for the API).
handler500 = "core.middleware.server_error"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/login/", ThrottledLoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/v1/", include((api_patterns, "api"))),
    path("tokens/", token_views.token_list, name="token-list"),
    path("tokens/<int:token_id>/revoke/", token_views.token_revoke, name="token-revoke"),
    path("healthz", healthz, name="healthz"),
    # Browsers ask for /favicon.ico on pages without a <link rel="icon"> (/metrics, JSON answers).
    path("favicon.ico", favicon),
    path("metrics", monitoring_views.prometheus_metrics, name="metrics"),
    path("", include("monitoring.urls")),
    path("", include("inference.urls")),
    path("", include("registry.urls")),
]
