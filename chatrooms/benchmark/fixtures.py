"""What benchstream stores before it measures, through the ORM of the server under test: accounts with sessions, and a live stream with stored chunks to replay."""
from __future__ import annotations

import json
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.hashers import make_password

from streaming.lifecycle import streams_delete_for_keys
from streaming.models import StreamChunk

from .. import services
from ..models import Room
from ..services import ReplyStart
from .model_server import bench_prompt

# Seeded streams of this process by id, to finish them as the app would once measured.
SEEDED_STREAMS: dict[str, tuple[ReplyStart, int]] = {}
SESSION_KEYS: dict[str, list[str]] = {}  # by username prefix, to remove them again


def accounts_create(*, prefix: str, count: int) -> list[dict[str, str]]:
    """`count` users named <prefix><n>, each logged in by a session of its own, as a browser would be
    after the login form: [{username, cookie}]."""
    user_model = get_user_model()
    unusable = make_password(None)  # one hash for all: these accounts never log in with a password
    names = [f"{prefix}{number}" for number in range(count)]
    user_model.objects.bulk_create([user_model(username=name, password=unusable) for name in names])
    session_store = import_module(settings.SESSION_ENGINE).SessionStore
    accounts = []
    for user in user_model.objects.filter(username__in=names).order_by("pk"):
        session = session_store()
        # What django.contrib.auth.login() puts in a session.
        session[SESSION_KEY] = user._meta.pk.value_to_string(user)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.save()
        SESSION_KEYS.setdefault(prefix, []).append(session.session_key)
        accounts.append({"username": user.get_username(),
                         "cookie": f"{settings.SESSION_COOKIE_NAME}={session.session_key}"})
    return accounts


def accounts_remove(*, prefix: str) -> int:
    """Remove the accounts made with this prefix, their rooms, streams and sessions; how many users went."""
    session_store = import_module(settings.SESSION_ENGINE).SessionStore
    for session_key in SESSION_KEYS.pop(prefix, []):
        session_store(session_key=session_key).delete()
    users = get_user_model().objects.filter(username__startswith=prefix)
    streams_delete_for_keys(keys=[room.stream_key for room in Room.objects.filter(owner__in=users)])
    return users.delete()[1].get(get_user_model()._meta.label, 0)


def replay_chunk_bodies(message_id: str, count: int) -> list[str]:
    """The chunks of an answer `count` chunks long, as the app stores them (one token per text delta)."""
    head = [{"type": "start", "messageId": message_id}, {"type": "start-step"}, {"type": "text-start", "id": "text-1"}]
    chunks: list[dict[str, Any]] = head[:count]
    chunks += [{"type": "text-delta", "id": "text-1", "delta": f" w{seq}:0"} for seq in range(count - len(chunks))]
    return [json.dumps(chunk, separators=(",", ":"), ensure_ascii=False) for chunk in chunks]


def replay_stream_seed(*, username: str, chunks: int) -> dict[str, str]:
    """A new room of this user with a live answer that has `chunks` chunks stored, as if its worker
    were still streaming it: {roomId, streamId}."""
    user = get_user_model().objects.get(username=username)
    room = services.room_create(user=user, name="benchstream replay")
    start = services.chat_send(user=user, room_id=room.pk, request_id="replay", text=bench_prompt(chunks))
    bodies = replay_chunk_bodies(str(start.message_id), chunks)
    StreamChunk.objects.bulk_create(
        [StreamChunk(stream_id=start.stream_id, index=index, body=body) for index, body in enumerate(bodies)],
        batch_size=2000,
    )
    SEEDED_STREAMS[start.stream_id] = (start, len(bodies))
    return {"roomId": str(room.pk), "streamId": start.stream_id}


def replay_stream_finish(*, stream_id: str) -> bool:
    """End a seeded stream the way the app ends an answer cut short."""
    start, count = SEEDED_STREAMS.pop(stream_id)
    return services.reply_finish(start=start, status="interrupted", content="", parts=[],
                                 last_index=count - 1) is not None
