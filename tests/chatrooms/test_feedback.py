"""Feedback on answers: the service, the socket frame, the page's thumbs and the admin."""
from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async

from chatrooms import events, selectors, services
from chatrooms.models import FEEDBACK_COMMENT_MAX_LENGTH, Message, MessageFeedback
from chatrooms.services import ActionRefused
from tests.factories import add_member, make_room, make_user


def exchange(room, author, text: str = "question", answer: str = "an answer") -> tuple[Message, Message]:
    asked = Message.objects.create(room=room, role="user", author=author, content=text,
                                   parts=[{"type": "text", "text": text}])
    answered = Message.objects.create(room=room, role="assistant", content=answer,
                                      parts=[{"type": "step-start"}, {"type": "text", "text": answer}])
    return asked, answered


@pytest.fixture
def broadcasts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """What services send to the channel layer after commit, in order."""
    sent: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(events, "_send_now", lambda group, event: sent.append((group, event)))
    return sent


# -- the service ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_one_feedback_per_user_per_message_changeable_and_removable(
    django_capture_on_commit_callbacks, broadcasts
):
    owner, member = make_user("owner"), make_user("member")
    room = make_room(owner)
    add_member(room, member)
    _, answer = exchange(room, owner)

    with django_capture_on_commit_callbacks(execute=True):
        assert services.message_feedback_set(user=owner, message_id=str(answer.pk), rating="up") == {
            "rating": "up", "comment": ""}
    assert broadcasts == [(events.user_group(owner.pk), {"type": "message.feedback", "frame": {
        "type": "message.feedback", "roomId": str(room.pk), "messageId": str(answer.pk),
        "feedback": {"rating": "up", "comment": ""}}})], "only the rater's own connections hear of it"

    services.message_feedback_set(user=owner, message_id=answer.pk, rating="down", comment="  Wrong year.  ")
    services.message_feedback_set(user=member, message_id=answer.pk, rating="up", comment="Helpful")
    rows = {f.user_id: (f.rating, f.comment) for f in MessageFeedback.objects.filter(message=answer)}
    assert rows == {owner.pk: (-1, "Wrong year."), member.pk: (1, "Helpful")}

    broadcasts.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert services.message_feedback_set(user=owner, message_id=answer.pk, rating=None) is None
    assert broadcasts[0][1]["frame"]["feedback"] is None
    assert list(MessageFeedback.objects.values_list("user_id", flat=True)) == [member.pk]
    # Removing what is not there is no error.
    assert services.message_feedback_set(user=owner, message_id=answer.pk, rating=None) is None


@pytest.mark.django_db
def test_only_a_finished_answer_in_a_visible_room_can_be_rated():
    owner, stranger = make_user("owner"), make_user("stranger")
    room = make_room(owner)
    question, answer = exchange(room, owner)
    streaming = Message.objects.create(room=room, role="assistant", status="streaming")

    for message_id in (question.pk, streaming.pk, 999999, "abc", "²", "9" * 64):
        with pytest.raises(ActionRefused) as refused:
            services.message_feedback_set(user=owner, message_id=message_id, rating="up")
        assert refused.value.code == "not_found"
    with pytest.raises(ActionRefused) as refused:
        services.message_feedback_set(user=stranger, message_id=answer.pk, rating="up")
    assert refused.value.code == "not_found" and refused.value.message == "No such message."
    with pytest.raises(ActionRefused) as refused:
        services.message_feedback_set(user=owner, message_id=answer.pk, rating="meh")
    assert refused.value.code == "bad_request"
    with pytest.raises(ActionRefused) as refused:
        services.message_feedback_set(user=owner, message_id=answer.pk, rating="up",
                                      comment="x" * (FEEDBACK_COMMENT_MAX_LENGTH + 1))
    assert refused.value.code == "bad_request"
    assert not MessageFeedback.objects.exists()


@pytest.mark.django_db
def test_a_joining_connection_gets_its_own_feedback_in_the_same_number_of_queries(django_assert_num_queries):
    owner, member = make_user("owner"), make_user("member")
    room = make_room(owner)
    add_member(room, member)
    answers = [exchange(room, owner, f"q{i}", f"a{i}")[1] for i in range(3)]
    services.message_feedback_set(user=owner, message_id=answers[0].pk, rating="up", comment="good")
    services.message_feedback_set(user=member, message_id=answers[1].pk, rating="down")

    with django_assert_num_queries(3):  # room, live stream, messages: no query per message
        snapshot = selectors.room_snapshot_for_user(user=owner, room_id=str(room.pk), since=None)
    feedback = {m["id"]: m.get("feedback", "absent") for m in snapshot.messages}
    assert feedback[str(answers[0].pk)] == {"rating": "up", "comment": "good"}
    assert feedback[str(answers[1].pk)] is None, "someone else's feedback is not shown"
    assert all(m["role"] == "assistant" or "feedback" not in m for m in snapshot.messages)


# -- the socket ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_feedback_over_the_socket_reaches_only_the_raters_own_connections(connect):
    owner, member = await database_sync_to_async(make_user)("owner"), await database_sync_to_async(make_user)("member")
    room = await database_sync_to_async(make_room)(owner)
    await database_sync_to_async(add_member)(room, member)
    question, answer = await database_sync_to_async(exchange)(room, owner)
    first, second, other = await connect(owner), await connect(owner), await connect(member)
    for client in (first, second, other):
        await client.send({"type": "room.join", "roomId": str(room.pk)})
        await client.receive_until("messages")

    await first.send({"type": "message.feedback", "messageId": str(answer.pk), "rating": "down",
                      "comment": "Too long", "ref": "f1"})
    frames = await first.receive_until("message.feedback")
    assert {"type": "ack", "ref": "f1"} in frames
    expected = {"type": "message.feedback", "roomId": str(room.pk), "messageId": str(answer.pk),
                "feedback": {"rating": "down", "comment": "Too long"}}
    assert frames[-1] == expected
    assert (await second.receive_until("message.feedback"))[-1] == expected
    assert await other.nothing_more()

    await second.send({"type": "message.feedback", "messageId": str(answer.pk), "rating": None})
    assert (await first.receive_until("message.feedback"))[-1]["feedback"] is None

    refusals = [
        ({"messageId": str(question.pk), "rating": "up"}, "not_found"),
        ({"messageId": "424242", "rating": "up"}, "not_found"),
        ({"messageId": str(answer.pk)}, "bad_request"),  # rating must be given, if only as null
        ({"messageId": str(answer.pk), "rating": "meh"}, "bad_request"),
        ({"messageId": str(answer.pk), "rating": 1}, "bad_request"),
        ({"messageId": str(answer.pk), "rating": "up", "comment": "x" * 2001}, "bad_request"),
    ]
    for fields, code in refusals:
        await first.send({"type": "message.feedback", "ref": "bad", **fields})
        error = (await first.receive_until("error"))[-1]
        assert (error["code"], error["ref"]) == (code, "bad"), fields
    await other.send({"type": "message.feedback", "messageId": str(answer.pk), "rating": "up"})
    await other.receive_until("message.feedback")
    stranger = await connect(await database_sync_to_async(make_user)("stranger"))
    await stranger.send({"type": "message.feedback", "messageId": str(answer.pk), "rating": "up"})
    assert (await stranger.receive_until("error"))[-1]["code"] == "not_found"
    stored = await database_sync_to_async(list)(MessageFeedback.objects.values_list("user__username", "rating"))
    assert stored == [("member", 1)]


# -- the page ------------------------------------------------------------------------------------


@pytest.fixture
def alice(client):
    user = make_user("alice")
    client.force_login(user)
    return user


@pytest.mark.django_db
def test_the_page_shows_thumbs_under_answers_with_the_viewers_own_state(client, alice):
    room = make_room(alice, "Rated")
    question, answer = exchange(room, alice)
    page = client.get(f"/rooms/{room.pk}/").content.decode()
    assert f'id="feedback-{answer.pk}"' in page and f'id="feedback-{question.pk}"' not in page
    assert page.count('aria-pressed="false"') == 2 and "feedback-comment" not in page

    url = f"/rooms/{room.pk}/messages/{answer.pk}/feedback/"
    partial = client.post(url, {"rating": "up", "comment": ""}, HTTP_HX_REQUEST="true").content.decode()
    assert f'id="feedback-up-{answer.pk}"' in partial and 'aria-pressed="true"' in partial
    assert 'value="none"' in partial, "clicking the pressed thumb removes the feedback"
    assert "Add a comment" in partial

    client.post(url, {"rating": "up", "comment": "Spot on <b>"}, HTTP_HX_REQUEST="true")
    page = client.get(f"/rooms/{room.pk}/").content.decode()
    assert 'aria-pressed="true"' in page and 'value="Spot on &lt;b&gt;"' in page
    single = client.get(f"/rooms/{room.pk}/messages/{answer.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert 'aria-pressed="true"' in single

    # Without JavaScript the form posts and comes back to the room.
    response = client.post(url, {"rating": "none"})
    assert response.status_code == 302 and response.url == f"/rooms/{room.pk}/#message-{answer.pk}"
    assert not MessageFeedback.objects.exists()


@pytest.mark.django_db
def test_the_feedback_view_refuses_what_the_service_refuses(client, alice):
    room = make_room(alice, "Mine")
    question, answer = exchange(room, alice)
    assert client.post(f"/rooms/{room.pk}/messages/{question.pk}/feedback/", {"rating": "up"}).status_code == 404
    assert client.post(f"/rooms/{room.pk}/messages/{answer.pk}/feedback/", {"rating": "meh"}).status_code == 400
    other_room = make_room(make_user("bob"), "Not hers")
    _, elsewhere = exchange(other_room, other_room.owner)
    assert client.post(f"/rooms/{other_room.pk}/messages/{elsewhere.pk}/feedback/",
                       {"rating": "up"}).status_code == 404
    assert client.post(f"/rooms/{room.pk}/messages/{elsewhere.pk}/feedback/", {"rating": "up"}).status_code == 404
    assert not MessageFeedback.objects.exists()


# -- the admin -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_staff_read_feedback_in_the_admin(admin_client):
    owner, member = make_user("owner"), make_user("member")
    room = make_room(owner, "Support")
    add_member(room, member)
    _, answer = exchange(room, owner, answer="The capital of Australia is Sydney.")
    services.message_feedback_set(user=owner, message_id=answer.pk, rating="down", comment="It is Canberra")
    services.message_feedback_set(user=member, message_id=answer.pk, rating="up", comment="Nicely put")

    listing = admin_client.get("/admin/chatrooms/messagefeedback/").content.decode()
    assert "The capital of Australia is Sydney." in listing and "Support" in listing
    assert "It is Canberra" in listing and "Nicely put" in listing and "owner" in listing
    down_only = admin_client.get("/admin/chatrooms/messagefeedback/?rating__exact=-1").content.decode()
    assert "It is Canberra" in down_only and "Nicely put" not in down_only
    found = admin_client.get("/admin/chatrooms/messagefeedback/?q=canberra").content.decode()
    assert "It is Canberra" in found and "Nicely put" not in found
    message_page = admin_client.get(f"/admin/chatrooms/message/{answer.pk}/change/")
    assert message_page.status_code == 200
    assert "It is Canberra" in message_page.content.decode() and "Nicely put" in message_page.content.decode()
