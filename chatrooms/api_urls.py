"""URLs of the read-only JSON API, under /api/."""
from django.urls import path

from . import api

app_name = "api"
urlpatterns = [
    path("rooms/", api.rooms, name="rooms"),
    path("rooms/<int:room_id>/", api.room, name="room"),
    path("rooms/<int:room_id>/messages/", api.messages, name="messages"),
]
