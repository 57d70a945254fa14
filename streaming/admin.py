"""Admin registration for streams (read-only)."""
from django.contrib import admin

from .models import Stream


@admin.register(Stream)
class StreamAdmin(admin.ModelAdmin):
    list_display = ["id", "key", "request_id", "status", "created_at", "heartbeat_at", "finished_at"]
    list_filter = ["status"]
    search_fields = ["key", "request_id"]

    def has_add_permission(self, request):  # noqa: ANN001, ANN201
        return False

    def has_change_permission(self, request, obj=None):  # noqa: ANN001, ANN201
        return False
