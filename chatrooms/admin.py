"""Admin registrations for rooms, memberships and messages."""
from django.contrib import admin

from .models import Membership, Message, Room


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "model", "created_at", "last_active_at"]
    search_fields = ["name", "owner__username"]
    list_select_related = ["owner"]
    inlines = [MembershipInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "room", "role", "author", "status", "created_at"]
    list_filter = ["role", "status"]
    search_fields = ["content"]
    list_select_related = ["room", "author"]
    raw_id_fields = ["room", "author", "stream"]
