"""The read-only JSON API: session or personal token, the protocol's shapes, pages, and nothing a user may not see."""
from __future__ import annotations

import pytest
from django.test import Client

from chatrooms import services
from chatrooms.models import ApiToken, Message
from tests.factories import add_member, make_room, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice():
    return make_user("alice")


def add_messages(room, author, count: int) -> list[Message]:
    return [Message.objects.create(room=room, role="user", author=author, content=f"m{i}",
                                   parts=[{"type": "text", "text": f"m{i}"}]) for i in range(count)]


def bearer(key: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def test_a_token_reads_rooms_and_messages_in_the_protocols_shapes(alice):
    room = make_room(alice, "Notes")
    add_messages(room, alice, 3)
    _token, key = services.api_token_create(user=alice, name="script")
    client = Client()
    rooms = client.get("/api/rooms/", **bearer(key)).json()
    assert rooms["page"] == 1 and rooms["pages"] == 1 and rooms["next"] is None
    assert rooms["rooms"][0]["id"] == str(room.pk) and rooms["rooms"][0]["messageCount"] == 3
    assert set(rooms["rooms"][0]) >= {"id", "name", "model", "systemPrompt", "messageCount", "createdAt",
                                      "lastActiveAt", "streaming"}
    one = client.get(f"/api/rooms/{room.pk}/", **bearer(key)).json()
    assert one["room"]["name"] == "Notes"
    page = client.get(f"/api/rooms/{room.pk}/messages/", **bearer(key)).json()
    assert [m["content"] for m in page["messages"]] == ["m0", "m1", "m2"]
    assert page["messages"][0]["author"] == "alice" and page["hasOlder"] is False and page["next"] is None
    assert ApiToken.objects.get().last_used_at is not None


def test_messages_page_back_in_time(alice, client):
    room = make_room(alice, "Long")
    add_messages(room, alice, 7)
    client.force_login(alice)  # the session works as well as a token
    first = client.get(f"/api/rooms/{room.pk}/messages/?limit=3").json()
    assert [m["content"] for m in first["messages"]] == ["m4", "m5", "m6"] and first["hasOlder"]
    second = client.get(first["next"]).json()
    assert [m["content"] for m in second["messages"]] == ["m1", "m2", "m3"]
    third = client.get(second["next"]).json()
    assert [m["content"] for m in third["messages"]] == ["m0"] and third["next"] is None


def test_rooms_page_by_fifty(alice, client):
    for number in range(51):
        make_room(alice, f"R{number}")
    client.force_login(alice)
    first = client.get("/api/rooms/").json()
    assert len(first["rooms"]) == 50 and first["pages"] == 2 and first["next"] == "/api/rooms/?page=2"
    assert len(client.get(first["next"]).json()["rooms"]) == 1
    assert client.get("/api/rooms/?page=3").status_code == 404


def test_nobody_reads_what_they_may_not_see(alice):
    bob = make_user("bob")
    hidden = make_room(bob, "Bob's")
    shared = make_room(bob, "Shared")
    add_member(shared, alice)
    _token, key = services.api_token_create(user=alice, name="script")
    client = Client()
    assert [r["name"] for r in client.get("/api/rooms/", **bearer(key)).json()["rooms"]] == ["Shared"]
    for url in (f"/api/rooms/{hidden.pk}/", f"/api/rooms/{hidden.pk}/messages/", "/api/rooms/999999/"):
        response = client.get(url, **bearer(key))
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert client.get(f"/api/rooms/{shared.pk}/messages/", **bearer(key)).status_code == 200


@pytest.mark.parametrize("headers", [{}, bearer("crt_wrong"), bearer("not-a-token"), {"HTTP_AUTHORIZATION": "Basic abc"}])
def test_no_valid_credentials_is_401(alice, headers):
    make_room(alice, "Notes")
    response = Client().get("/api/rooms/", **headers)
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"


def test_a_revoked_token_or_an_inactive_user_reads_nothing(alice):
    token, key = services.api_token_create(user=alice, name="script")
    services.api_token_revoke(user=alice, token_id=token.pk)
    assert Client().get("/api/rooms/", **bearer(key)).status_code == 401
    _token, key = services.api_token_create(user=alice, name="again")
    alice.is_active = False
    alice.save()
    assert Client().get("/api/rooms/", **bearer(key)).status_code == 401


@pytest.mark.parametrize("query", ["limit=0", "limit=201", "limit=x", "before=-1", "before=abc", "limit=²",
                                   "before=99999999999999999999999"])
def test_bad_parameters_are_400_with_a_reason(alice, client, query):
    room = make_room(alice, "Notes")
    client.force_login(alice)
    response = client.get(f"/api/rooms/{room.pk}/messages/?{query}")
    assert response.status_code == 400 and "must be a whole number" in response.json()["error"]["message"]


def test_the_api_is_read_only(alice, client):
    room = make_room(alice, "Notes")
    client.force_login(alice)
    response = client.post(f"/api/rooms/{room.pk}/messages/", {"text": "hi"})
    assert response.status_code == 405 and response["Allow"] == "GET, HEAD"
    assert not Message.objects.exists()


def test_the_settings_page_makes_shows_once_and_revokes_tokens(alice, client):
    client.force_login(alice)
    page = client.post("/settings/", {"name": "backup"}).content.decode()
    token = ApiToken.objects.get()
    key = page.split('id="new-token-key" type="text" readonly value="')[1].split('"')[0]
    assert key.startswith("crt_") and token.prefix == key[:10] and key not in token.key_hash
    assert Client().get("/api/rooms/", **bearer(key)).status_code == 200
    listing = client.get("/settings/").content.decode()
    assert "backup" in listing and key not in listing  # shown once only
    response = client.post("/settings/", {"name": "  "})
    assert response.status_code == 400 and "1 to 100 characters" in response.content.decode()
    bob = make_user("bob")
    bob_client = Client()
    bob_client.force_login(bob)
    assert bob_client.post(f"/settings/tokens/{token.pk}/revoke/").status_code == 404  # not bob's
    assert client.post(f"/settings/tokens/{token.pk}/revoke/").status_code == 302
    assert not ApiToken.objects.exists()
    assert Client().get("/api/rooms/", **bearer(key)).status_code == 401


def test_a_user_has_at_most_twenty_tokens(alice):
    for number in range(services.API_TOKENS_PER_USER):
        services.api_token_create(user=alice, name=f"t{number}")
    with pytest.raises(services.ActionRefused, match="revoke one first"):
        services.api_token_create(user=alice, name="one more")
