"""Automatic titles: a room still named by default is titled from its first exchange, once."""
from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async

from chatrooms import assistant, services, titles
from chatrooms.models import DEFAULT_ROOM_NAME, Room
from chatrooms.scripted_model_server import ScriptedReply
from tests.factories import make_room, make_user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(("question", "title"), [
    ("what is the best way to plan a trip to Lyon? I have a week", "What is the best way to"),
    ("```py\nx = 1\n```\nwhy does this fail", "Why does this fail"),
    ("  **Budget** for Q3.\nMore detail", "Budget for Q3"),
    ("?!", "Chat"),
    ("a" * 200, "a" * 60),
])
def test_the_heuristic_title_is_the_first_words_of_the_question(question, title):
    assert titles.heuristic_title(question) == title[:1].upper() + title[1:]


@pytest.mark.parametrize(("answer", "title"), [
    ('"Trip to Lyon"', "Trip to Lyon"),
    ("**Title:** Trip to Lyon.\nHere is why", "Trip to Lyon"),
    ("\n\n  Budget   review  ", "Budget review"),
    ("", ""),
])
def test_a_models_title_is_cleaned(answer, title):
    assert titles.clean_model_title(answer) == title


async def replies_and_titles_settled() -> None:
    """Wait for this loop's replies to end, then for the title tasks they started.

    A reply starts its title task after `stream.done` has gone out and before it leaves RUNNING,
    so once the replies have ended every title task they will ever start is in `titles._pending`.
    Asserting "no title call" any earlier passes before the call could have been made.
    """
    replies = [run.task for run in list(assistant.RUNNING.values()) if run.task is not None]
    await asyncio.wait_for(asyncio.gather(*replies, return_exceptions=True), timeout=10)
    await asyncio.wait_for(asyncio.gather(*list(titles._pending), return_exceptions=True), timeout=10)


async def new_chat(connect, name: str = DEFAULT_ROOM_NAME):
    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    await client.send({"type": "room.create", "name": name})
    room_id = (await client.receive_until("room.created"))[-1]["room"]["id"]
    await client.send({"type": "room.join", "roomId": room_id})
    await client.receive_until("messages")
    return user, client, room_id


async def test_a_default_named_room_gets_a_title_from_its_first_exchange(scripted_model, connect):
    _user, client, room_id = await new_chat(connect)
    scripted_model.enqueue(ScriptedReply(tokens=["Lyon ", "in ", "spring ", "is ", "lovely."]),
                           ScriptedReply(tokens=["**Spring trip to Lyon**"]))
    await client.send({"type": "chat.send", "requestId": "q", "text": "Plan a spring trip to Lyon"})
    await client.receive_until("stream.done")
    while True:
        rooms = (await client.receive_until("rooms"))[-1]["rooms"]
        if rooms[0]["name"] != DEFAULT_ROOM_NAME:
            break
    assert rooms[0]["name"] == "Spring trip to Lyon"
    request = scripted_model.requests[-1]
    assert request["messages"][0]["content"] == titles.TITLE_PROMPT and not request.get("stream")
    assert "Plan a spring trip to Lyon" in request["messages"][1]["content"]
    assert "Lyon in spring is lovely." in request["messages"][1]["content"]
    room = await database_sync_to_async(Room.objects.get)(pk=room_id)
    assert room.named_automatically is False
    # Only the first exchange names it.
    scripted_model.enqueue(ScriptedReply(tokens=["Again."]))
    await client.send({"type": "chat.send", "requestId": "q2", "text": "And in winter?"})
    await client.receive_until("stream.done")
    await replies_and_titles_settled()
    assert len(scripted_model.requests) == 3
    assert (await database_sync_to_async(Room.objects.get)(pk=room_id)).name == "Spring trip to Lyon"


async def test_a_failed_title_call_falls_back_to_the_first_words(scripted_model, connect):
    _user, client, room_id = await new_chat(connect)
    scripted_model.enqueue(ScriptedReply(tokens=["Sure."]), ScriptedReply(status=500))
    await client.send({"type": "chat.send", "requestId": "q", "text": "Summarise the quarterly budget review"})
    await client.receive_until("stream.done")
    while (await client.receive_until("rooms"))[-1]["rooms"][0]["name"] == DEFAULT_ROOM_NAME:
        pass
    room = await database_sync_to_async(Room.objects.get)(pk=room_id)
    assert room.name == "Summarise the quarterly budget review"


async def test_a_room_a_person_named_is_never_retitled(scripted_model, connect):
    _user, client, room_id = await new_chat(connect, name="Budget")
    scripted_model.enqueue(ScriptedReply(tokens=["Sure."]))
    await client.send({"type": "chat.send", "requestId": "q", "text": "Summarise it"})
    await client.receive_until("stream.done")
    await replies_and_titles_settled()
    assert len(scripted_model.requests) == 1
    assert (await database_sync_to_async(Room.objects.get)(pk=room_id)).name == "Budget"


def test_a_rename_before_the_title_wins():
    owner = make_user()
    room = services.room_create(user=owner, name="")
    assert (room.name, room.named_automatically) == (DEFAULT_ROOM_NAME, True)
    services.room_rename(user=owner, room_id=room.pk, name="Mine")
    assert services.room_set_automatic_title(room_id=room.pk, title="Theirs") is False
    assert Room.objects.get(pk=room.pk).name == "Mine"
    other = make_room(owner, DEFAULT_ROOM_NAME)
    assert services.room_set_automatic_title(room_id=other.pk, title="Theirs") is True
    assert services.room_set_automatic_title(room_id=other.pk, title="Again") is False
    assert Room.objects.get(pk=other.pk).name == "Theirs"


async def test_the_offline_model_titles_with_the_heuristic(connect, settings):
    settings.LLM_MODEL, settings.LLM_MODELS, settings.LOCAL_MODEL_DELAY_MS = "", [], 0
    _user, client, room_id = await new_chat(connect)
    await client.send({"type": "chat.send", "requestId": "q", "text": "Ideas for a birthday party"})
    await client.receive_until("stream.done")
    while (await client.receive_until("rooms"))[-1]["rooms"][0]["name"] == DEFAULT_ROOM_NAME:
        pass
    assert (await database_sync_to_async(Room.objects.get)(pk=room_id)).name == "Ideas for a birthday party"


def test_the_page_creates_a_room_to_be_titled_when_no_name_is_given(client):
    client.force_login(make_user())
    response = client.post("/rooms/new/", {"name": "  "})
    room = Room.objects.get()
    assert response.status_code == 302 and (room.name, room.named_automatically) == (DEFAULT_ROOM_NAME, True)
