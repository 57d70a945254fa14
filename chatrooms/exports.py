"""The room export format: the JSON document, its Markdown reading copy, and the checks an import must pass."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from django.utils.dateparse import parse_datetime
from django.utils.text import slugify

from streaming.safe_json import InvalidJSON, UnsafeJSON, loads_strict, problem_in

from .attachments import DOWNLOAD_URL
from .models import ROOM_NAME_MAX_LENGTH, SYSTEM_PROMPT_MAX_LENGTH, Message, Room
from .shapes import iso

EXPORT_FORMAT = "chatrooms.room-export"
EXPORT_VERSION = 1
# Statuses a stored, finished message may have: a live answer's placeholder is never exported.
FINISHED_STATUSES = frozenset(status for status in Message.Status.values if status != Message.Status.STREAMING)
TOOL_SUMMARY_MAX_CHARS = 300
FILENAME_MAX_LENGTH = 60
ATTACHMENT_FILENAME_MAX_LENGTH = 255
ATTACHMENT_MEDIA_TYPE_MAX_LENGTH = 100


# -- exporting ---------------------------------------------------------------------------------


def export_document(*, room: Room, messages: list[Message], exported_at: datetime) -> dict[str, Any]:
    """The JSON export of a room; `messages` oldest first, with their attachments prefetched."""
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "exportedAt": iso(exported_at),
        "room": {
            "name": room.name,
            "model": room.model,
            "systemPrompt": room.system_prompt,
            "createdAt": iso(room.created_at),
        },
        "messages": [_message_entry(message) for message in messages],
    }


def _message_entry(message: Message) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "role": message.role,
        "author": message.author.username if message.role == Message.Role.USER and message.author else None,
        "content": message.content,
        "parts": message.parts,
        "status": message.status,
        "createdAt": iso(message.created_at),
    }
    attachments = list(message.attachments.all())
    if attachments:
        entry["attachments"] = [
            {"filename": a.filename, "mediaType": a.media_type, "text": a.text} for a in attachments
        ]
    return entry


def export_filename(*, room_name: str, extension: str) -> str:
    """A filename that is safe anywhere: the room's name as an ASCII slug."""
    stem = slugify(room_name)[:FILENAME_MAX_LENGTH].strip("-_") or "room"
    return f"{stem}.{extension}"


def export_json_text(document: dict[str, Any]) -> str:
    return json.dumps(document, ensure_ascii=False, indent=2)


def export_markdown(document: dict[str, Any]) -> str:
    """A reading copy: a heading per message with who and when, its text, tool calls summarised."""
    room = document["room"]
    lines = [f"# {room['name']}", ""]
    lines.append(f"- Model: {room['model'] or 'the default'}")
    lines.append(f"- Created: {_readable_time(room['createdAt'])}")
    lines.append(f"- Exported: {_readable_time(document['exportedAt'])}")
    lines.append(f"- Messages: {len(document['messages'])}")
    if room["systemPrompt"]:
        lines += ["", "System prompt:", "", *_quoted(room["systemPrompt"])]
    for message in document["messages"]:
        lines += ["", "---", "", _message_heading(message), ""]
        lines += _message_body(message)
    return "\n".join(lines).rstrip() + "\n"


def _message_heading(message: dict[str, Any]) -> str:
    who = (message["author"] or "someone") if message["role"] == Message.Role.USER else "Assistant"
    heading = f"## {who} ({message['role']}) · {_readable_time(message['createdAt'])}"
    if message["status"] != Message.Status.COMPLETE:
        heading += f" · {message['status']}"
    return heading


def _message_body(message: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if message["status"] != Message.Status.COMPLETE:
        note = " ".join(filter(None, [f"Status: {message['status']}.", _STATUS_NOTES.get(message["status"])]))
        lines += [f"*{note}*", ""]
    parts = [part for part in message["parts"] if isinstance(part, dict)]
    wrote_text = False
    for part in parts:
        kind = str(part.get("type", ""))
        if kind == "text" and part.get("text"):
            lines += [part["text"], ""]
            wrote_text = True
        elif kind == "reasoning" and part.get("text"):
            lines += ["Reasoning:", "", *_quoted(part["text"]), ""]
        elif kind.startswith("tool-"):
            lines += [_tool_summary(part), ""]
        elif kind == "data-notice" and isinstance(part.get("data"), dict) and part["data"].get("text"):
            lines += [f"*Note: {part['data']['text']}*", ""]
    if not wrote_text and message["content"]:
        lines += [message["content"], ""]
    for attachment in message.get("attachments", []):
        lines.append(f"- Attachment: {_code(attachment['filename'])} ({attachment['mediaType']})")
    return lines


_STATUS_NOTES = {
    Message.Status.ABORTED: "Stopped before it finished.",
    Message.Status.ERROR: "The model call failed.",
    Message.Status.INTERRUPTED: "Its worker stopped before it finished.",
}


def _tool_summary(part: dict[str, Any]) -> str:
    name = str(part.get("type", ""))[len("tool-"):]
    state = str(part.get("state", ""))
    summary = f"- Tool call {_code(name)} ({state or 'unknown state'})"
    if "input" in part:
        summary += f", input {_code(_short_json(part['input']))}"
    if state == "output-available" and "output" in part:
        summary += f", output {_code(_short_json(part['output']))}"
    if part.get("errorText"):
        summary += f", error: {_short(str(part['errorText']))}"
    return summary


def _short_json(value: Any) -> str:
    return _short(json.dumps(value, ensure_ascii=False, default=str))


def _short(text: str) -> str:
    return text if len(text) <= TOOL_SUMMARY_MAX_CHARS else text[: TOOL_SUMMARY_MAX_CHARS - 1] + "…"


def _code(text: str) -> str:
    """Inline code that holds any text: the fence is longer than any run of backticks in it."""
    text = text.replace("\n", " ")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    padding = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{padding}{text}{padding}{fence}"


def _quoted(text: str) -> list[str]:
    return [f"> {line}".rstrip() for line in text.splitlines()]


def _readable_time(stamp: str) -> str:
    moment = parse_datetime(stamp.replace("Z", "+00:00"))
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if moment else stamp


# -- checking an import ------------------------------------------------------------------------


class ImportRefused(Exception):
    """The file is not an export this server can import; the message says what is wrong."""


@dataclass(frozen=True)
class ImportedAttachment:
    filename: str
    media_type: str
    text: str


@dataclass(frozen=True)
class ImportedMessage:
    role: str
    author: str | None
    content: str
    parts: list[dict[str, Any]]
    status: str
    created_at: datetime
    attachments: list[ImportedAttachment]


@dataclass(frozen=True)
class ImportedRoom:
    name: str
    model: str
    system_prompt: str
    created_at: datetime
    messages: list[ImportedMessage]


def parse_export_file(raw: bytes) -> Any:
    """The JSON in an uploaded file; ImportRefused if it is not JSON."""
    try:
        return loads_strict(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, InvalidJSON):
        raise ImportRefused("The file is not a JSON export (it is not valid UTF-8 JSON).") from None
    except UnsafeJSON as error:
        raise ImportRefused(f"The file cannot be imported: {error}.") from None


def checked_import(data: Any) -> ImportedRoom:
    """Check every field of an export document; ImportRefused, naming the first problem, if any is wrong."""
    if not isinstance(data, dict):
        raise ImportRefused("The file must hold a JSON object, a room export.")
    if data.get("format") != EXPORT_FORMAT:
        raise ImportRefused(f"This is not a room export: `format` must be {EXPORT_FORMAT!r}.")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version != EXPORT_VERSION:
        raise ImportRefused(f"Unsupported export version {version!r}: this server reads version {EXPORT_VERSION}.")
    problem = problem_in(data)  # what no database stores, or no page can encode
    if problem:
        raise ImportRefused(f"The file cannot be imported: {problem}.")
    room = _object(data.get("room"), "room")
    name = _string(room.get("name"), "room.name").strip()
    if not name or len(name) > ROOM_NAME_MAX_LENGTH:
        raise ImportRefused(f"`room.name` must be 1 to {ROOM_NAME_MAX_LENGTH} characters.")
    model = _string(room.get("model", ""), "room.model", max_length=200)
    system_prompt = _string(room.get("systemPrompt", ""), "room.systemPrompt", max_length=SYSTEM_PROMPT_MAX_LENGTH)
    created_at = _moment(room.get("createdAt"), "room.createdAt")
    entries = data.get("messages")
    if not isinstance(entries, list):
        raise ImportRefused("`messages` must be a list.")
    messages = [_checked_message(entry, f"messages[{i}]") for i, entry in enumerate(entries)]
    return ImportedRoom(name, model, system_prompt, created_at, messages)


def _checked_message(entry: Any, where: str) -> ImportedMessage:
    entry = _object(entry, where)
    role = entry.get("role")
    if role not in Message.Role.values:
        raise ImportRefused(f"`{where}.role` must be one of {', '.join(Message.Role.values)}, not {_shown(role)}.")
    status = entry.get("status")
    if status == Message.Status.STREAMING:
        raise ImportRefused(f"`{where}` is still streaming: only finished messages can be imported.")
    if status not in FINISHED_STATUSES:
        raise ImportRefused(f"`{where}.status` must be one of {', '.join(sorted(FINISHED_STATUSES))}, "
                            f"not {_shown(status)}.")
    author = entry.get("author")
    if author is not None:
        author = _string(author, f"{where}.author", max_length=150)
    content = _string(entry.get("content"), f"{where}.content")
    parts = entry.get("parts")
    if not isinstance(parts, list):
        raise ImportRefused(f"`{where}.parts` must be a list.")
    for index, part in enumerate(parts):
        _check_part(part, f"{where}.parts[{index}]")
    attachments = entry.get("attachments", [])
    if not isinstance(attachments, list):
        raise ImportRefused(f"`{where}.attachments` must be a list.")
    return ImportedMessage(
        role=role, author=author, content=content, parts=parts, status=status,
        created_at=_moment(entry.get("createdAt"), f"{where}.createdAt"),
        attachments=[_checked_attachment(a, f"{where}.attachments[{i}]") for i, a in enumerate(attachments)],
    )


def _check_part(part: Any, where: str) -> None:
    """The shapes the page and the model's history rely on; other part types pass as they are."""
    part = _object(part, where)
    kind = _string(part.get("type"), f"{where}.type")
    if kind in ("text", "reasoning"):
        _string(part.get("text"), f"{where}.text")
    elif kind.startswith("tool-"):
        if kind == "tool-":
            raise ImportRefused(f"`{where}.type` must name the tool after `tool-`.")
        _string(part.get("toolCallId"), f"{where}.toolCallId")
        _string(part.get("state", ""), f"{where}.state")
        if "approval" in part and part["approval"] is not None:
            _object(part["approval"], f"{where}.approval")
        if "errorText" in part:
            _string(part["errorText"], f"{where}.errorText")
    _check_url(part, kind, where)


def _check_url(part: dict[str, Any], kind: str, where: str) -> None:
    """A part's `url` is kept only in the form this app makes: a file part links to this app's download
    of an attachment (`/attachments/<id>/`, re-pointed to the imported copy); any other part (a model's
    `source-url`) to a web page over http or https. No `javascript:`, `data:` or other site's file."""
    if "url" not in part:
        return
    url = part["url"]
    if kind == "file":
        if not (isinstance(url, str) and DOWNLOAD_URL.match(url)):
            raise ImportRefused(f"`{where}.url` must be a link to one of the room's attachments "
                                f"(/attachments/<id>/), not {_shown(url)}.")
        return
    try:
        parts = urlsplit(url) if isinstance(url, str) else None
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ImportRefused(f"`{where}.url` must be an http or https link, not {_shown(url)}.")


def _checked_attachment(entry: Any, where: str) -> ImportedAttachment:
    entry = _object(entry, where)
    return ImportedAttachment(
        filename=_string(entry.get("filename"), f"{where}.filename", max_length=ATTACHMENT_FILENAME_MAX_LENGTH),
        media_type=_string(entry.get("mediaType"), f"{where}.mediaType", max_length=ATTACHMENT_MEDIA_TYPE_MAX_LENGTH),
        text=_string(entry.get("text"), f"{where}.text"),
    )


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ImportRefused(f"`{where}` must be an object.")
    return value


def _string(value: Any, where: str, max_length: int | None = None) -> str:
    if not isinstance(value, str):
        raise ImportRefused(f"`{where}` must be a string.")
    if max_length is not None and len(value) > max_length:
        raise ImportRefused(f"`{where}` may be at most {max_length} characters.")
    return value


def _moment(value: Any, where: str) -> datetime:
    try:
        moment = parse_datetime(value.replace("Z", "+00:00")) if isinstance(value, str) else None
    except ValueError:  # well formed but impossible, like month 13
        moment = None
    if moment is None:
        raise ImportRefused(f"`{where}` must be an ISO 8601 date and time.")
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _shown(value: Any) -> str:
    return repr(value)[:40]

