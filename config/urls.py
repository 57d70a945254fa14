"""Top-level URL map: admin, accounts, and the chatrooms app."""
from django.contrib import admin
from django.urls import include, path

from chatrooms.health import healthz

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("accounts/", include("chatrooms.account_urls")),
    path("api/", include("chatrooms.api_urls")),
    path("moderation/", include("chatrooms.moderation_urls")),
    path("", include("chatrooms.urls")),
]
