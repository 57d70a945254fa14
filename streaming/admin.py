"""Admin registrations for streams and their chunks, read-only (chatrooms/admin.py adds the abort action)."""
from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.text import Truncator

from .models import Stream, StreamChunk


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by the streaming machinery: staff look, nobody edits or deletes them here."""

    def has_add_permission(self, request, obj=None):  # noqa: ANN001, ANN201
        return False

    def has_change_permission(self, request, obj=None):  # noqa: ANN001, ANN201
        return False

    def has_delete_permission(self, request, obj=None):  # noqa: ANN001, ANN201
        return False


@admin.register(Stream)
class StreamAdmin(ReadOnlyAdmin):
    list_display = ["id", "key", "request_id", "status", "created_at", "heartbeat_at", "finished_at", "chunk_count"]
    list_filter = ["status"]
    search_fields = ["key", "request_id"]
    readonly_fields = ["chunks_link"]
    ordering = ["-created_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Stream]:
        # Counted in the page's one query, not one query per row.
        return super().get_queryset(request).annotate(chunk_total=Count("chunks"))

    @admin.display(description="chunks", ordering="chunk_total")
    def chunk_count(self, stream: Stream) -> int:
        return stream.chunk_total

    @admin.display(description="stored chunks")
    def chunks_link(self, stream: Stream) -> str:
        url = reverse("admin:streaming_streamchunk_changelist") + f"?stream__id__exact={stream.pk}"
        return format_html('<a href="{}">{} chunks, in order</a>', url, stream.chunk_total)


@admin.register(StreamChunk)
class StreamChunkAdmin(ReadOnlyAdmin):
    """A stream's chunks exactly as they were sent; reached from a stream's page."""

    list_display = ["stream", "index", "body_excerpt", "created_at"]
    list_select_related = ["stream"]
    ordering = ["stream", "index"]
    show_full_result_count = False  # a COUNT over every chunk of every stream is slow and says little

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        return lookup == "stream__id__exact" or super().lookup_allowed(lookup, value, request)

    @admin.display(description="body")
    def body_excerpt(self, chunk: StreamChunk) -> str:
        return Truncator(chunk.body).chars(160)
