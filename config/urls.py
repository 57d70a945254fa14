"""Top-level URL map: admin, accounts, and the chatrooms app."""
from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("chatrooms.account_urls")),
    path("", include("chatrooms.urls")),
]
