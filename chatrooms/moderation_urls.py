"""URLs of the live moderation page, under /moderation/ (staff only)."""
from django.urls import path

from . import moderation_views

app_name = "moderation"
urlpatterns = [
    path("", moderation_views.moderation, name="page"),
    path("streams/", moderation_views.live_streams, name="streams"),
    path("messages/", moderation_views.recent_messages, name="messages"),
    path("messages/<int:message_id>/hide/", moderation_views.message_hide, name="message_hide"),
    path("messages/<int:message_id>/unhide/", moderation_views.message_unhide, name="message_unhide"),
    path("streams/<uuid:stream_id>/abort/", moderation_views.stream_abort, name="stream_abort"),
]
