"""The app's pages and htmx partials."""
from django.urls import path

from . import views

app_name = "chatrooms"
urlpatterns = [
    path("", views.home, name="home"),
    path("settings/", views.account_settings, name="settings"),
    path("settings/tokens/<int:token_id>/revoke/", views.api_token_revoke, name="api_token_revoke"),
    path("rooms/new/", views.room_create, name="room_create"),
    path("rooms/import/", views.room_import, name="room_import"),
    path("rooms/<int:room_id>/export.md", views.room_export, {"extension": "md"}, name="room_export_md"),
    path("rooms/<int:room_id>/export.json", views.room_export, {"extension": "json"}, name="room_export_json"),
    path("search/", views.search, name="search"),
    path("rooms/<int:room_id>/", views.room_detail, name="room"),
    path("rooms/<int:room_id>/rename/", views.room_rename, name="room_rename"),
    path("rooms/<int:room_id>/configure/", views.room_configure, name="room_configure"),
    path("rooms/<int:room_id>/clear/", views.room_clear, name="room_clear"),
    path("rooms/<int:room_id>/delete/", views.room_delete, name="room_delete"),
    path("rooms/<int:room_id>/members/", views.room_members, name="room_members"),
    path("rooms/<int:room_id>/share/", views.room_share, name="room_share"),
    path("rooms/<int:room_id>/unshare/", views.room_unshare, name="room_unshare"),
    path("rooms/<int:room_id>/pin/", views.room_pin, name="room_pin"),
    path("rooms/<int:room_id>/archive/", views.room_archive, name="room_archive"),
    path("rooms/<int:room_id>/messages/", views.older_messages, name="older_messages"),
    path("rooms/<int:room_id>/messages/<int:message_id>/", views.message_detail, name="message"),
    path("rooms/<int:room_id>/messages/<int:message_id>/feedback/", views.message_feedback, name="message_feedback"),
    path("rooms/<int:room_id>/attachments/", views.attachment_upload, name="attachment_upload"),
    path("attachments/<int:attachment_id>/", views.attachment_detail, name="attachment"),
]
