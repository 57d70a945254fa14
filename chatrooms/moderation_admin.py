"""The admin's moderation tools: list filters, counts without a query per row, actions that call the
audited services, the Stream admin's abort action and the read-only audit log."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.db.models import Count, Exists, IntegerField, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.utils.http import content_disposition_header

from streaming.admin import StreamAdmin
from streaming.models import Stream

from . import services
from .exports import export_filename, export_markdown
from .models import AuditLogEntry, Membership, Message, Room
from .services import ActionRefused


def _count(related: QuerySet[Any], link: str) -> Coalesce:
    """COUNT of `related` rows whose `link` is the outer row, as a column of the outer query."""
    counted = related.filter(**{link: OuterRef("pk")}).order_by().values(link).annotate(n=Count("pk")).values("n")
    return Coalesce(Subquery(counted, output_field=IntegerField()), Value(0))


def rooms_with_counts(rooms: QuerySet[Room]) -> QuerySet[Room]:
    """Rooms with `member_total`, `message_total` (finished messages, hidden ones too: staff see them)
    and `is_streaming`, all in the changelist's one query."""
    return rooms.annotate(
        member_total=_count(Membership.objects.all(), "room"),
        message_total=_count(Message.objects.exclude(status=Message.Status.STREAMING), "room"),
        is_streaming=Exists(Message.objects.filter(room=OuterRef("pk"), status=Message.Status.STREAMING)),
    )


class _YesNoFilter(admin.SimpleListFilter):
    """A yes/no list filter; subclasses say which rows are "yes"."""

    yes_label = "Yes"
    no_label = "No"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", self.yes_label), ("no", self.no_label)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.filter(**self.yes)
        if self.value() == "no":
            return queryset.exclude(**self.yes)
        return queryset


class LockedFilter(_YesNoFilter):
    title = "locked"
    parameter_name = "locked"
    yes_label, no_label = "Locked", "Open"
    yes = {"locked_at__isnull": False}


class StreamingFilter(_YesNoFilter):
    """Uses the `is_streaming` column of rooms_with_counts."""

    title = "streaming"
    parameter_name = "streaming"
    yes_label, no_label = "Answering now", "Idle"
    yes = {"is_streaming": True}


class HiddenFilter(_YesNoFilter):
    title = "hidden"
    parameter_name = "hidden"
    yes_label, no_label = "Hidden", "Shown"
    yes = {"hidden_at__isnull": False}


class StaffActions:
    """Admin actions as thin callers of the moderation services: the services check staff, write the
    audit rows and tell the viewers; a bulk service takes every selected id at once."""

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)  # type: ignore[misc]
        # Django's bulk delete is neither audited nor seen by viewers: hide, clear or lock instead.
        actions.pop("delete_selected", None)
        return actions

    def run_service(
        self, request: HttpRequest, queryset: QuerySet[Any], service: Callable[..., list[Any]], ids_name: str,
        done: str,
    ) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        try:
            changed = service(staff=request.user, **{ids_name: ids})
        except ActionRefused as refused:
            self.message_user(request, refused.message, level=messages.ERROR)  # type: ignore[attr-defined]
            return
        note = done.format(len(changed))
        if len(changed) < len(ids):
            note += f" {len(ids) - len(changed)} of those selected had nothing to change."
        self.message_user(request, note, level=messages.SUCCESS)  # type: ignore[attr-defined]

    def transcript_download(self, request: HttpRequest, queryset: QuerySet[Room]) -> HttpResponse | None:
        """One Markdown file with the transcript of every selected room (chatrooms/exports.py)."""
        try:
            documents = services.rooms_export_by_staff(staff=request.user,
                                                       room_ids=list(queryset.values_list("pk", flat=True)))
        except ActionRefused as refused:
            self.message_user(request, refused.message, level=messages.ERROR)  # type: ignore[attr-defined]
            return None
        text = "\n\n".join(export_markdown(document) for document in documents)
        name = documents[0]["room"]["name"] if len(documents) == 1 else "transcripts"
        response = HttpResponse(text, content_type="text/markdown; charset=utf-8")
        response["Content-Disposition"] = content_disposition_header(
            as_attachment=True, filename=export_filename(room_name=name, extension="md"))
        return response


admin.site.unregister(Stream)


@admin.register(Stream)
class ModeratedStreamAdmin(StaffActions, StreamAdmin):
    """streaming's read-only Stream admin, plus the abort action (streaming knows nothing of rooms)."""

    actions = ["abort_streams"]

    def has_abort_permission(self, request: HttpRequest) -> bool:
        return request.user.is_staff and request.user.has_perm("streaming.change_stream")

    @admin.action(description="Abort selected live streams (they end as aborted)", permissions=["abort"])
    def abort_streams(self, request: HttpRequest, queryset: QuerySet[Stream]) -> None:
        self.run_service(request, queryset, services.streams_abort_by_staff, "stream_ids",
                         "Asked {} live stream(s) to stop.")


@admin.register(AuditLogEntry)
class AuditLogEntryAdmin(admin.ModelAdmin):
    """Every moderation action, as the services wrote it: read-only for everyone."""

    list_display = ["created_at", "actor_username", "action", "object_type", "object_id", "object_repr"]
    list_filter = ["action", "object_type"]
    search_fields = ["actor_username", "object_repr", "object_id"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
