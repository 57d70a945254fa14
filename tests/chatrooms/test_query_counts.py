"""Hot paths keep a fixed number of queries, however many rooms, messages or chunks there are."""
from __future__ import annotations

import pytest

from chatrooms import selectors, services
from chatrooms.models import Message
from streaming.models import Stream, StreamChunk
from streaming.recorder import as_uuid, store_batches
from tests.factories import add_member, make_room, make_user

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("rooms", [1, 15])
def test_the_room_list_is_two_queries(django_assert_num_queries, settings, rooms):
    settings.STREAMS_PER_USER = 0  # this test keeps 15 answers live at once; the limit is tested elsewhere
    owner, member = make_user("o"), make_user("m")
    for i in range(rooms):
        room = make_room(owner, f"r{i}")
        add_member(room, member)
        services.chat_send(user=owner, room_id=room.pk, request_id=f"q{i}", text="hi")
        services.room_pin(user=member, room_id=room.pk, pinned=i % 2 == 0)
    # The rooms with their counts and the user's pins and archives; then every room's members, prefetched.
    with django_assert_num_queries(2):
        listed = selectors.room_list_for_user(user=member)
    assert len(listed) == rooms and all(r["streaming"] and r["messageCount"] == 1 for r in listed)
    assert all(r["members"] == ["m"] and r["archived"] is False for r in listed)
    assert sorted(r["name"] for r in listed if r["pinned"]) == sorted(f"r{i}" for i in range(0, rooms, 2))


@pytest.mark.parametrize(("streams", "chunks"), [(1, 1), (1, 50), (20, 10)])
def test_a_recorder_write_is_one_select_and_one_insert_whatever_its_size(
    django_assert_num_queries, settings, streams, chunks
):
    settings.STREAMS_PER_USER = 0  # one user with 20 live answers; the limit is tested elsewhere
    user = make_user()
    starts = [services.chat_send(user=user, room_id=make_room(user, f"r{i}").pk, request_id="q", text="hi")
              for i in range(streams)]
    batches = [(start.stream_id, [StreamChunk(stream_id=start.stream_id, index=i, body="{}") for i in range(chunks)])
               for start in starts]
    # SAVEPOINT/RELEASE wrap the two statements inside the test's transaction. (SQLite takes at most
    # 999 parameters a statement: Django splits an INSERT of more than 333 chunks.)
    with django_assert_num_queries(4):
        assert store_batches(batches) == {as_uuid(start.stream_id) for start in starts}
    assert StreamChunk.objects.count() == streams * chunks


def test_joining_reads_a_fixed_number_of_queries(django_assert_num_queries):
    user = make_user()
    room = make_room(user)
    for i in range(3):
        services.chat_send(user=user, room_id=room.pk, request_id=f"q{i}", text="hi")
        Message.objects.filter(status="streaming").update(status="complete")
        Stream.objects.update(status="complete")
    services.chat_send(user=user, room_id=room.pk, request_id="live", text="hi")
    with django_assert_num_queries(4):
        snapshot = selectors.room_snapshot_for_user(user=user, room_id=str(room.pk), since=None)
    assert len(snapshot.messages) == 7 and snapshot.live is not None
