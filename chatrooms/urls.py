"""The app's pages and htmx partials."""
from django.urls import path

from . import views

app_name = "chatrooms"
urlpatterns = [
    path("", views.home, name="home"),
    path("rooms/new/", views.room_create, name="room_create"),
    path("rooms/<int:room_id>/", views.room_detail, name="room"),
    path("rooms/<int:room_id>/rename/", views.room_rename, name="room_rename"),
    path("rooms/<int:room_id>/configure/", views.room_configure, name="room_configure"),
    path("rooms/<int:room_id>/clear/", views.room_clear, name="room_clear"),
    path("rooms/<int:room_id>/delete/", views.room_delete, name="room_delete"),
    path("rooms/<int:room_id>/messages/", views.older_messages, name="older_messages"),
    path("rooms/<int:room_id>/messages/<int:message_id>/", views.message_detail, name="message"),
]
