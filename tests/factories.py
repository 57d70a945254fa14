"""Test data: users, rooms and members, made the way the app makes them."""
from __future__ import annotations

from django.contrib.auth import get_user_model

from chatrooms import services
from chatrooms.models import Membership, Room


def make_user(username: str = "alice", password: str = "correct-horse-battery") -> object:
    return get_user_model().objects.create_user(username=username, password=password)


def make_room(owner: object, name: str = "General") -> Room:
    return services.room_create(user=owner, name=name)


def add_member(room: Room, user: object) -> Membership:
    return Membership.objects.create(room=room, user=user)
