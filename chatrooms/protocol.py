"""The WebSocket protocol: validating client frames and building the frames the server sends."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from streaming.safe_json import problem_in

from .attachments import ATTACHMENTS_PER_MESSAGE
from .models import FEEDBACK_COMMENT_MAX_LENGTH, MESSAGE_TEXT_MAX_LENGTH, ROOM_NAME_MAX_LENGTH, SYSTEM_PROMPT_MAX_LENGTH
from .shapes import FEEDBACK_RATING_NAMES

PROTOCOL_VERSION = 1
FRAME_MAX_BYTES = 64 * 1024
REF_MAX_LENGTH = 64
REQUEST_ID_MAX_LENGTH = 64
TOOL_CALL_ID_MAX_LENGTH = 200  # models choose these ids, and some choose long ones
BODY_MAX_BYTES = 16 * 1024
ID_MAX_LENGTH = 64
USERNAME_MAX_LENGTH = 150  # Django's User.username


class ProtocolError(Exception):
    """A client frame the server refuses; `code` is one of the protocol's error codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Field:
    kind: type | tuple[type, ...]
    required: bool = True
    min_length: int = 0
    max_length: int | None = None
    strip: bool = False
    max_bytes: int | None = None


def _id(required: bool = True) -> Field:
    return Field(str, required=required, min_length=1, max_length=ID_MAX_LENGTH)


def _request_id() -> Field:
    return Field(str, min_length=1, max_length=REQUEST_ID_MAX_LENGTH)


def _body() -> Field:
    return Field(dict, required=False, max_bytes=BODY_MAX_BYTES)


def _username() -> Field:
    return Field(str, min_length=1, max_length=USERNAME_MAX_LENGTH, strip=True)


def _tool_call_id() -> Field:
    return Field(str, min_length=1, max_length=TOOL_CALL_ID_MAX_LENGTH)


FRAME_FIELDS: dict[str, dict[str, Field]] = {
    "room.create": {"name": Field(str, min_length=1, max_length=ROOM_NAME_MAX_LENGTH, strip=True)},
    "room.rename": {"roomId": _id(), "name": Field(str, min_length=1, max_length=ROOM_NAME_MAX_LENGTH, strip=True)},
    "room.configure": {
        "roomId": _id(),
        "model": Field(str, required=False, min_length=1, max_length=200),
        "systemPrompt": Field(str, required=False, max_length=SYSTEM_PROMPT_MAX_LENGTH),
    },
    "room.clear": {"roomId": _id()},
    "room.delete": {"roomId": _id()},
    "room.join": {"roomId": _id(), "since": Field(dict, required=False)},
    "room.leave": {"roomId": _id()},
    "room.share": {"roomId": _id(), "username": _username()},
    "room.unshare": {"roomId": _id(), "username": _username()},
    "room.pin": {"roomId": _id(), "pinned": Field(bool)},
    "room.archive": {"roomId": _id(), "archived": Field(bool)},
    "chat.send": {
        "requestId": _request_id(),
        "text": Field(str, min_length=1, max_length=MESSAGE_TEXT_MAX_LENGTH),
        "roomId": _id(required=False),
        "body": _body(),
        "attachments": Field(list, required=False),  # ids from the upload view; see _validate_attachment_ids
    },
    "chat.regenerate": {"requestId": _request_id(), "roomId": _id(required=False), "body": _body()},
    "chat.edit": {
        "requestId": _request_id(),
        "messageId": _id(),
        "text": Field(str, min_length=1, max_length=MESSAGE_TEXT_MAX_LENGTH),
        "body": _body(),
    },
    "chat.cancel": {"requestId": _request_id()},
    "tool.result": {"requestId": _request_id(), "toolCallId": _tool_call_id(), "output": Field(object)},
    "tool.approval": {"requestId": _request_id(), "toolCallId": _tool_call_id(), "approved": Field(bool)},
    # `rating` may be null (remove the feedback) but not absent: see _validate_feedback_rating.
    "message.feedback": {
        "messageId": _id(),
        "rating": Field(str, required=False, max_length=8),
        "comment": Field(str, required=False, max_length=FEEDBACK_COMMENT_MAX_LENGTH),
    },
}

KIND_NAMES = {str: "a string", dict: "an object", bool: "a boolean", int: "an integer", list: "a list"}


def parse_frame(text: str | None, binary: bytes | None) -> dict[str, Any]:
    """Parse and validate one client frame; raises ProtocolError with the code to answer."""
    if text is None:
        raise ProtocolError("bad_request", "Binary frames are not supported; send JSON text.")
    if len(text) > FRAME_MAX_BYTES or len(text.encode()) > FRAME_MAX_BYTES:
        raise ProtocolError("too_large", f"A frame may be at most {FRAME_MAX_BYTES} bytes.")
    try:
        frame = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # deep nesting: json's recursion runs out before FRAME_MAX_BYTES does
        raise ProtocolError("bad_request", "The frame is not valid JSON.") from None
    if not isinstance(frame, dict):
        raise ProtocolError("bad_request", "A frame must be a JSON object.")
    return frame


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def frame_ref(frame: dict[str, Any]) -> str | None:
    """The frame's `ref` if it is well formed, so that even an error answer can echo it."""
    ref = frame.get("ref")
    return ref if isinstance(ref, str) and len(ref) <= REF_MAX_LENGTH and problem_in(ref) is None else None


def validate_frame(frame: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Check the type and every field; returns (type, cleaned fields)."""
    kind = frame.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_request", "A frame needs a string field `type`.")
    if "ref" in frame and frame_ref(frame) is None:
        raise ProtocolError("bad_request", f"`ref` must be a string of at most {REF_MAX_LENGTH} characters"
                                           " (without \\u0000 or a lone surrogate).")
    fields = FRAME_FIELDS.get(kind)
    if fields is None:
        raise ProtocolError("unknown_type", f"Unknown frame type {kind[:64]!r}.")
    problem = problem_in(frame)  # what no database stores (nor PostgreSQL compares), or no socket sends
    if problem:
        raise ProtocolError("bad_request", f"The frame cannot be taken: {problem}.")
    cleaned: dict[str, Any] = {}
    for name, spec in fields.items():
        if name not in frame or frame[name] is None:
            if spec.required:
                raise ProtocolError("bad_request", f"`{kind}` needs the field `{name}`.")
            continue
        value = frame[name]
        if not isinstance(value, spec.kind) or (spec.kind is int and isinstance(value, bool)):
            raise ProtocolError("bad_request", f"`{name}` must be {KIND_NAMES.get(spec.kind, 'valid')}.")
        if isinstance(value, str):
            if spec.strip:
                value = value.strip()
            if len(value) < spec.min_length:
                raise ProtocolError("bad_request", f"`{name}` must not be empty.")
            if spec.max_length is not None and len(value) > spec.max_length:
                raise ProtocolError("bad_request", f"`{name}` may be at most {spec.max_length} characters.")
        if spec.max_bytes is not None and len(json.dumps(value, ensure_ascii=False).encode()) > spec.max_bytes:
            raise ProtocolError("too_large", f"`{name}` may be at most {spec.max_bytes} bytes.")
        cleaned[name] = value
    if kind == "room.join" and "since" in cleaned:
        cleaned["since"] = _validate_since(cleaned["since"])
    if kind == "chat.send" and "attachments" in cleaned:
        cleaned["attachments"] = _validate_attachment_ids(cleaned["attachments"])
    if kind == "message.feedback":
        _validate_feedback_rating(frame)
    return kind, cleaned


def _validate_since(since: dict[str, Any]) -> dict[str, Any]:
    stream_id, index = since.get("streamId"), since.get("index")
    if not isinstance(stream_id, str) or not 1 <= len(stream_id) <= ID_MAX_LENGTH:
        raise ProtocolError("bad_request", "`since.streamId` must be a stream id string.")
    if not isinstance(index, int) or isinstance(index, bool) or index < -1:
        raise ProtocolError("bad_request", "`since.index` must be an integer of -1 or more.")
    return {"streamId": stream_id, "index": index}


def _validate_attachment_ids(ids: list[Any]) -> list[str]:
    if len(ids) > ATTACHMENTS_PER_MESSAGE:
        raise ProtocolError("bad_request", f"`attachments` may hold at most {ATTACHMENTS_PER_MESSAGE} ids.")
    if not all(isinstance(i, str) and 1 <= len(i) <= ID_MAX_LENGTH for i in ids):
        raise ProtocolError("bad_request", "`attachments` must be a list of attachment id strings.")
    if len(set(ids)) != len(ids):
        raise ProtocolError("bad_request", "`attachments` names the same attachment twice.")
    return ids


def _validate_feedback_rating(frame: dict[str, Any]) -> None:
    if "rating" not in frame or frame["rating"] not in (*FEEDBACK_RATING_NAMES.values(), None):
        raise ProtocolError("bad_request", '`rating` must be "up", "down" or null (to remove your feedback).')


# -- frames the server sends --------------------------------------------------------------------


def error_frame(code: str, message: str, ref: str | None = None, **extra: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message, **extra}
    if ref is not None:
        frame["ref"] = ref
    return frame


def chunk_frame_prefix(*, room_id: str, request_id: str, stream_id: str) -> str:
    """What every `stream.chunk` frame of one stream starts with, up to its index: built once per stream."""
    head = json.dumps({"type": "stream.chunk", "roomId": room_id, "requestId": request_id, "streamId": stream_id})
    return f'{head[:-1]}, "index": '


def chunk_frame_text(prefix: str, index: int, body: str, *, replay: bool) -> str:
    """A `stream.chunk` frame built around the stored chunk text, without parsing it again."""
    return f'{prefix}{index}, "chunk": {body}, "replay": true}}' if replay else f'{prefix}{index}, "chunk": {body}}}'


def transient_frame_text(*, room_id: str, request_id: str, stream_id: str, body: str) -> str:
    """A `stream.data` frame: a transient data part, sent live and never stored."""
    head = json.dumps({"type": "stream.data", "roomId": room_id, "requestId": request_id, "streamId": stream_id})
    return f'{head[:-1]}, "chunk": {body}}}'
