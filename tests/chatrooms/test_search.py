"""Search: rooms by name and messages by text, only in rooms the searcher can see; the sidebar's view;
and a room page opened at a found message, however old."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from chatrooms import selectors, services
from chatrooms.models import Message, Room
from chatrooms.selectors import SEARCH_QUERY_MAX_LENGTH, search_for_user
from tests.factories import add_member, make_room, make_user

pytestmark = pytest.mark.django_db
on_postgresql = pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's full-text search")


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    """These tests make many users; the real hasher takes a second for each."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def say(room: Room, author, text: str, *, minutes_ago: int = 0, role: str = "user", status: str = "complete") -> Message:
    message = Message.objects.create(room=room, role=role, author=author if role == "user" else None, content=text,
                                     parts=[{"type": "text", "text": text}], status=status)
    Message.objects.filter(pk=message.pk).update(created_at=timezone.now() - timedelta(minutes=minutes_ago))
    return message


def matched_text(hit) -> str:
    return "".join(piece.text for piece in hit.snippet if piece.match)


def test_rooms_by_name_and_messages_by_text_newest_first():
    alice = make_user("alice")
    plans = make_room(alice, "Deploy plans")
    lunch = make_room(alice, "Lunch")
    older = say(lunch, alice, "When do we deploy the app?", minutes_ago=30)
    newer = say(plans, alice, "Did the deploy go out?", minutes_ago=5)
    say(lunch, alice, "Pizza or noodles?", minutes_ago=1)

    results = search_for_user(user=alice, query="deploy")

    assert [hit.room_id for hit in results.rooms] == [plans.pk]
    assert [hit.message_id for hit in results.messages] == [newer.pk, older.pk]
    first = results.messages[0]
    assert (first.room_id, first.room_name, first.author, first.role) == (plans.pk, "Deploy plans", "alice", "user")
    assert matched_text(first).lower() == "deploy"


def test_matching_ignores_case_and_treats_wildcards_as_text():
    alice = make_user("alice")
    room = make_room(alice, "Numbers")
    sure = say(room, alice, "I am 100% SURE about it")
    say(room, alice, "There are 1000 cats here")
    underscore = say(room, alice, "snake_case here")
    say(room, alice, "snakeXcase there")

    assert [hit.message_id for hit in search_for_user(user=alice, query="100%").messages] == [sure.pk]
    assert [hit.message_id for hit in search_for_user(user=alice, query="sure").messages] == [sure.pk]
    assert [hit.message_id for hit in search_for_user(user=alice, query="snake_case").messages] == [underscore.pk]
    assert search_for_user(user=alice, query="'; DROP TABLE chatrooms_message; --").messages == []
    for odd in ('"', "-", "or", "!!", "(a | b", "sure:*", "\\", "%", "_", "<b>"):  # tsquery syntax, LIKE wildcards
        search_for_user(user=alice, query=odd)
    assert [hit.message_id for hit in search_for_user(user=alice, query="%").messages] == [sure.pk]
    assert Message.objects.count() == 4


def test_a_half_typed_word_finds_the_message_as_you_type():
    alice = make_user("alice")
    room = make_room(alice, "Languages")
    message = say(room, alice, "I have been learning Python for a year")
    results = search_for_user(user=alice, query="pyth")
    assert [hit.message_id for hit in results.messages] == [message.pk]
    assert matched_text(results.messages[0]) == "Pyth"
    assert [hit.room_id for hit in search_for_user(user=alice, query="langu").rooms] == [room.pk]


def test_the_snippet_is_a_short_window_around_the_match():
    alice = make_user("alice")
    room = make_room(alice, "Long")
    text = " ".join(f"filler{i}" for i in range(200)) + " the needle is here " + " ".join(
        f"more{i}" for i in range(200))
    say(room, alice, text)
    hit = search_for_user(user=alice, query="needle").messages[0]
    shown = "".join(piece.text for piece in hit.snippet)
    assert matched_text(hit) == "needle"
    assert "needle is here" in shown and len(shown) < 400 and shown != text


def test_streaming_placeholders_are_not_results():
    alice = make_user("alice")
    room = make_room(alice, "Live")
    finished = say(room, alice, "the answer so far: kumquat", role="assistant")
    say(room, alice, "kumquat being typed", role="assistant", status="streaming")
    assert [hit.message_id for hit in search_for_user(user=alice, query="kumquat").messages] == [finished.pk]
    assert search_for_user(user=alice, query="kumquat").messages[0].author is None


def test_empty_and_overlong_queries():
    alice = make_user("alice")
    say(make_room(alice, "Anything"), alice, "something")
    for empty in ("", "   ", "\x00"):
        results = search_for_user(user=alice, query=empty)
        assert (results.query, results.rooms, results.messages) == ("", [], [])
    long_query = "x" * (SEARCH_QUERY_MAX_LENGTH + 300)
    assert search_for_user(user=alice, query=long_query).query == "x" * SEARCH_QUERY_MAX_LENGTH
    assert search_for_user(user=alice, query="some\x00thing").query == "something"


def test_the_limit_applies_to_rooms_and_to_messages():
    alice = make_user("alice")
    for i in range(4):
        say(make_room(alice, f"Topic {i}"), alice, f"topic number {i}")
    results = search_for_user(user=alice, query="topic", limit=3)
    assert len(results.rooms) == 3 and len(results.messages) == 3


def test_a_strangers_rooms_and_messages_never_appear():
    alice, bob = make_user("alice"), make_user("bob")
    mine = make_room(alice, "Secret plans of mine")
    say(mine, alice, "my secret")
    theirs = make_room(bob, "Secret plans of bob")
    say(theirs, bob, "bob's secret")
    results = search_for_user(user=alice, query="secret")
    assert [hit.room_id for hit in results.rooms] == [mine.pk]
    assert {hit.room_id for hit in results.messages} == {mine.pk}


def test_a_member_finds_a_shared_room_until_removed():
    alice, bob = make_user("alice"), make_user("bob")
    room = make_room(alice, "Shared garden")
    say(room, alice, "plant the tomatoes")
    services.room_share(user=alice, room_id=room.pk, username="bob")
    assert [hit.room_id for hit in search_for_user(user=bob, query="garden").rooms] == [room.pk]
    assert [hit.author for hit in search_for_user(user=bob, query="tomatoes").messages] == ["alice"]

    services.room_unshare(user=alice, room_id=room.pk, username="bob")
    results = search_for_user(user=bob, query="tomatoes")
    assert results.messages == [] and search_for_user(user=bob, query="garden").rooms == []


def test_archived_rooms_stay_searchable_and_are_marked():
    alice, bob = make_user("alice"), make_user("bob")
    room = make_room(alice, "Old project")
    add_member(room, bob)
    say(room, alice, "the old project notes")
    services.room_archive(user=alice, room_id=room.pk, archived=True)

    results = search_for_user(user=alice, query="project")
    assert [(hit.room_id, hit.archived) for hit in results.rooms] == [(room.pk, True)]
    assert [hit.room_archived for hit in results.messages] == [True]
    # Archiving is one person's own tidying: the room is not archived for its other viewers.
    assert [hit.room_archived for hit in search_for_user(user=bob, query="project").messages] == [False]


@on_postgresql
def test_postgresql_finds_word_forms_and_uses_web_search_syntax():
    alice = make_user("alice")
    room = make_room(alice, "Ops")
    deployed = say(room, alice, "We deployed the new build yesterday", minutes_ago=3)
    rollback = say(room, alice, "The deployment needs a rollback", minutes_ago=2)
    say(room, alice, "Nothing to see here", minutes_ago=1)

    assert {hit.message_id for hit in search_for_user(user=alice, query="deploying").messages} == {
        deployed.pk, rollback.pk}
    assert [hit.message_id for hit in search_for_user(user=alice, query="deploying -rollback").messages] == [
        deployed.pk]
    assert [hit.message_id for hit in search_for_user(user=alice, query='"new build"').messages] == [deployed.pk]
    hit = search_for_user(user=alice, query="deploying").messages[-1]
    assert matched_text(hit) in ("deployed", "deployment")


@on_postgresql
def test_postgresql_ranks_the_better_match_first():
    alice = make_user("alice")
    room = make_room(alice, "Ranking")
    strong = say(room, alice, "tea tea tea: all about tea", minutes_ago=10)
    weak = say(room, alice, "coffee, and maybe tea", minutes_ago=1)
    assert [hit.message_id for hit in search_for_user(user=alice, query="tea").messages] == [strong.pk, weak.pk]


def test_search_queries_are_few(django_assert_max_num_queries):
    alice = make_user("alice")
    for i in range(5):
        say(make_room(alice, f"Room {i}"), alice, f"note {i}")
    with django_assert_max_num_queries(2):
        results = search_for_user(user=alice, query="o")
    assert len(results.messages) == 5


# -- the view ----------------------------------------------------------------------------------


@pytest.fixture
def alice(client):
    user = make_user("alice")
    client.force_login(user)
    return user


def test_the_sidebar_gets_a_results_partial_linking_to_each_message(client, alice):
    room = make_room(alice, "<i>Recipes</i>")
    message = say(room, alice, "<script>alert(1)</script> bake the bread at 220")
    services.room_archive(user=alice, room_id=room.pk, archived=True)

    html = client.get("/search/", {"q": "bread"}, HTTP_HX_REQUEST="true").content.decode()

    assert "<html" not in html
    assert f'href="/rooms/{room.pk}/?around={message.pk}#message-{message.pk}"' in html
    assert "in &lt;i&gt;Recipes&lt;/i&gt;" in html and "archived" in html
    assert "<mark>bread</mark>" in html
    assert "<script>" not in html and "<i>" not in html


def test_an_empty_box_gives_back_the_room_list_and_no_match_says_so(client, alice):
    make_room(alice, "Recipes")
    assert client.get("/search/", {"q": "  "}, HTTP_HX_REQUEST="true").content == b""
    assert "Nothing matches “zzz”" in client.get("/search/", {"q": "zzz"}, HTTP_HX_REQUEST="true").content.decode()


def test_without_javascript_the_search_is_a_full_page(client, alice):
    room = make_room(alice, "Recipes")
    page = client.get("/search/", {"q": "recipe"}).content.decode()
    assert "<html" in page and 'value="recipe"' in page and f'href="/rooms/{room.pk}/"' in page


def test_the_room_page_has_the_search_box(client, alice):
    room = make_room(alice, "Recipes")
    page = client.get(f"/rooms/{room.pk}/").content.decode()
    assert 'hx-get="/search/"' in page and 'hx-trigger="input changed delay:300ms, search"' in page
    assert 'action="/search/"' in page


def test_search_needs_a_login(client):
    assert client.get("/search/", {"q": "x"}).status_code == 302


def test_a_link_to_an_old_message_opens_the_room_with_it_loaded(client, alice):
    room = make_room(alice, "Long")
    messages = [say(room, alice, f"question {i}") for i in range(120)]
    old = messages[20]

    assert f'id="message-{old.pk}"' not in client.get(f"/rooms/{room.pk}/").content.decode()
    page = client.get(f"/rooms/{room.pk}/", {"around": old.pk}).content.decode()
    assert f'id="message-{old.pk}"' in page
    assert f'id="message-{messages[-1].pk}"' in page, "and everything after it, to the newest"
    assert "Older messages" in page, "the ones before it still load on scroll"

    other_room = make_room(alice, "Other")
    elsewhere = say(other_room, alice, "not in Long")
    for around in (elsewhere.pk, "abc", 10**9):
        page = client.get(f"/rooms/{room.pk}/", {"around": around}).content.decode()
        assert f'id="message-{messages[-1].pk}"' in page and f'id="message-{old.pk}"' not in page


def test_messages_to_reach_counts_from_the_message_to_the_newest():
    alice = make_user("alice")
    room = make_room(alice, "Count")
    messages = [say(room, alice, f"m{i}") for i in range(10)]
    assert selectors.messages_to_reach(room=room, message_id=messages[6].pk, context=2) == 6
    assert selectors.messages_to_reach(room=room, message_id=10**9, context=2) is None
