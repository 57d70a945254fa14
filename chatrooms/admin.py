"""Admin registrations for rooms, memberships, messages, and the feedback and files on them."""
from django.contrib import admin

from . import services
from django.utils.text import Truncator

from .models import Membership, Message, Room
from .moderation_admin import HiddenFilter, LockedFilter, StaffActions, StreamingFilter, rooms_with_counts
from .models import Attachment, MessageFeedback


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Room)
class RoomAdmin(StaffActions, admin.ModelAdmin):
    """Rooms for moderation. Lock, unlock, clear and export go through the audited services."""

    list_display = ["name", "owner", "member_count", "message_count", "last_active_at", "streaming", "locked"]
    list_filter = [LockedFilter, StreamingFilter]
    search_fields = ["name", "owner__username"]
    list_select_related = ["owner"]
    readonly_fields = ["locked_at", "created_at", "last_active_at"]
    inlines = [MembershipInline]
    actions = ["lock_rooms", "unlock_rooms", "clear_rooms", "export_transcripts"]

    def get_queryset(self, request):  # noqa: ANN001, ANN201
        return rooms_with_counts(super().get_queryset(request))

    @admin.display(description="members", ordering="member_total")
    def member_count(self, room: Room) -> int:
        return room.member_total

    @admin.display(description="messages", ordering="message_total")
    def message_count(self, room: Room) -> int:
        return room.message_total

    @admin.display(description="streaming", boolean=True, ordering="is_streaming")
    def streaming(self, room: Room) -> bool:
        return room.is_streaming

    @admin.display(description="locked", boolean=True, ordering="locked_at")
    def locked(self, room: Room) -> bool:
        return room.locked_at is not None

    @admin.action(description="Lock selected rooms (read-only for everyone)", permissions=["change"])
    def lock_rooms(self, request, queryset):  # noqa: ANN001, ANN201
        self.run_service(request, queryset, services.rooms_lock, "room_ids", "Locked {} room(s).")

    @admin.action(description="Unlock selected rooms", permissions=["change"])
    def unlock_rooms(self, request, queryset):  # noqa: ANN001, ANN201
        self.run_service(request, queryset, services.rooms_unlock, "room_ids", "Unlocked {} room(s).")

    @admin.action(description="Clear selected rooms (delete every message)", permissions=["change"])
    def clear_rooms(self, request, queryset):  # noqa: ANN001, ANN201
        self.run_service(request, queryset, services.rooms_clear_by_staff, "room_ids", "Cleared {} room(s).")

    @admin.action(description="Export transcripts of selected rooms (Markdown)", permissions=["view"])
    def export_transcripts(self, request, queryset):  # noqa: ANN001, ANN201
        return self.transcript_download(request, queryset)


class MessageFeedbackInline(admin.TabularInline):
    """Who rated this answer and how; staff read it here, people give it on the page."""

    model = MessageFeedback
    extra = 0
    fields = ["user", "rating", "comment", "updated_at"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return False


class AttachmentInline(admin.TabularInline):
    model = Attachment
    extra = 0
    fields = ["filename", "media_type", "size", "uploaded_by", "created_at"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return False


@admin.register(Message)
class MessageAdmin(StaffActions, admin.ModelAdmin):
    """Messages of every room, hidden ones too. Hide and unhide go through the audited services."""

    list_display = ["id", "room", "author", "role", "status", "hidden", "created_at", "excerpt"]
    list_filter = [HiddenFilter, "role", "status"]
    search_fields = ["content"]
    list_select_related = ["room", "author"]
    raw_id_fields = ["room", "author", "stream"]
    readonly_fields = ["hidden_at", "hidden_by"]  # set by the hide and unhide actions only
    inlines = [MessageFeedbackInline, AttachmentInline]
    actions = ["hide_messages", "unhide_messages"]

    @admin.display(description="hidden", boolean=True, ordering="hidden_at")
    def hidden(self, message: Message) -> bool:
        return message.hidden_at is not None

    @admin.display(description="content")
    def excerpt(self, message: Message) -> str:
        return Truncator(message.content).chars(80)

    @admin.action(description="Hide selected messages from everyone but staff", permissions=["change"])
    def hide_messages(self, request, queryset):  # noqa: ANN001, ANN201
        self.run_service(request, queryset, services.message_hide, "message_ids", "Hid {} message(s).")

    @admin.action(description="Unhide selected messages", permissions=["change"])
    def unhide_messages(self, request, queryset):  # noqa: ANN001, ANN201
        self.run_service(request, queryset, services.message_unhide, "message_ids", "Unhid {} message(s).")


@admin.register(MessageFeedback)
class MessageFeedbackAdmin(admin.ModelAdmin):
    """Thumbs up and down on answers, newest first: what people thought of the assistant."""

    list_display = ["message_excerpt", "room", "user", "rating", "comment_excerpt", "updated_at"]
    list_filter = ["rating"]
    search_fields = ["comment", "user__username", "message__content", "message__room__name"]
    list_select_related = ["message__room", "user"]
    raw_id_fields = ["message", "user"]
    ordering = ["-updated_at"]
    date_hierarchy = "updated_at"

    @admin.display(description="answer")
    def message_excerpt(self, feedback: MessageFeedback) -> str:
        return Truncator(feedback.message.content).chars(80) or f"(message {feedback.message_id})"

    @admin.display(description="room", ordering="message__room__name")
    def room(self, feedback: MessageFeedback) -> str:
        return feedback.message.room.name

    @admin.display(description="comment")
    def comment_excerpt(self, feedback: MessageFeedback) -> str:
        return Truncator(feedback.comment).chars(80)
