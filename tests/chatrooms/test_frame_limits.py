"""Every field of every client frame has a size limit, so that a frame type added later cannot forget one.
(The frame itself is capped at FRAME_MAX_BYTES before any field is read.)"""
from __future__ import annotations

from chatrooms.protocol import FRAME_FIELDS, FRAME_MAX_BYTES

# Fields checked by their own validator in protocol.validate_frame, or capped elsewhere.
CHECKED_APART = {
    ("room.join", "since"): "_validate_since: streamId at most 64 characters, index an integer",
    ("chat.send", "attachments"): "_validate_attachment_ids: at most ATTACHMENTS_PER_MESSAGE ids of 64 characters",
    ("tool.result", "output"): "the frame's 64 KiB, then capped at 16,000 characters like a server tool's output",
}


def test_every_field_of_every_frame_is_bounded():
    unbounded = []
    for kind, fields in FRAME_FIELDS.items():
        for name, spec in fields.items():
            if (kind, name) in CHECKED_APART:
                continue
            if spec.kind is str and spec.max_length is not None:
                continue
            if spec.kind is dict and spec.max_bytes is not None:
                continue
            if spec.kind in (bool, int):
                continue
            unbounded.append(f"{kind}.{name}")
    assert unbounded == [], "give these fields a max_length or max_bytes in protocol.FRAME_FIELDS"
    assert FRAME_MAX_BYTES == 64 * 1024
