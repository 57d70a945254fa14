"""Text attachments: which files are accepted, how an upload is read, and how a file reaches the model."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from django.conf import settings

# Extension -> the media type stored and shown. Worked out from the name, never taken from the
# browser's Content-Type: browsers disagree (a .ts file is often "video/mp2t"), and a client could
# claim text/html for anything.
TEXT_MEDIA_TYPES: dict[str, str] = {
    ".txt": "text/plain", ".text": "text/plain", ".log": "text/plain",
    ".md": "text/markdown", ".markdown": "text/markdown", ".rst": "text/x-rst",
    ".csv": "text/csv", ".tsv": "text/tab-separated-values",
    ".json": "application/json", ".jsonl": "application/jsonl",
    ".yaml": "application/yaml", ".yml": "application/yaml", ".toml": "application/toml",
    ".ini": "text/plain", ".cfg": "text/plain", ".conf": "text/plain",
    ".xml": "application/xml", ".html": "text/html", ".htm": "text/html", ".css": "text/css",
    ".scss": "text/x-scss", ".sql": "application/sql",
    ".py": "text/x-python", ".js": "text/javascript", ".mjs": "text/javascript", ".cjs": "text/javascript",
    ".jsx": "text/javascript", ".ts": "text/x-typescript", ".tsx": "text/x-typescript",
    ".java": "text/x-java", ".kt": "text/x-kotlin", ".scala": "text/x-scala", ".go": "text/x-go",
    ".rs": "text/x-rust", ".c": "text/x-c", ".h": "text/x-c", ".cc": "text/x-c++", ".cpp": "text/x-c++",
    ".hpp": "text/x-c++", ".cs": "text/x-csharp", ".swift": "text/x-swift", ".rb": "text/x-ruby",
    ".php": "text/x-php", ".pl": "text/x-perl", ".lua": "text/x-lua", ".r": "text/x-r",
    ".sh": "text/x-shellscript", ".bash": "text/x-shellscript", ".zsh": "text/x-shellscript",
    ".ex": "text/x-elixir", ".exs": "text/x-elixir", ".hs": "text/x-haskell", ".dart": "text/x-dart",
    ".vue": "text/plain", ".svelte": "text/plain", ".tex": "text/x-tex",
    ".diff": "text/x-diff", ".patch": "text/x-diff",
}
ATTACHMENTS_PER_MESSAGE = 5
# Uploads a user may have waiting to be sent, in all rooms; older than PENDING_MAX_AGE they are deleted.
PENDING_UPLOADS_MAX = 20
PENDING_MAX_AGE_HOURS = 24
FILENAME_MAX_LENGTH = 255
# A file's text must not close its own block in the model's input (see text_with_attachments).
CLOSING_DELIMITER = re.compile(r"</(attached-file)", re.IGNORECASE)


class AttachmentRefused(Exception):
    """An upload that cannot be attached; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class TextFile:
    filename: str
    media_type: str
    text: str
    size: int


def accepted_extensions() -> list[str]:
    return sorted(TEXT_MEDIA_TYPES)


def only_text_files_message() -> str:
    return "Only text files can be attached: " + ", ".join(accepted_extensions()) + "."


def clean_filename(name: str) -> str:
    """The file's own name (no folders), without control characters or quotes, at most 255 characters."""
    base = PurePath(name.replace("\\", "/")).name
    base = re.sub(r'[\x00-\x1f\x7f"<>]', "", base).strip() or "file.txt"
    if len(base) > FILENAME_MAX_LENGTH:
        stem, dot, extension = base.rpartition(".")
        base = stem[: FILENAME_MAX_LENGTH - len(extension) - 1] + dot + extension if dot else base[:FILENAME_MAX_LENGTH]
    return base


def read_text_file(*, filename: str, size: int, content: bytes | None = None, read: Any = None) -> TextFile:
    """Check an upload and decode it: an accepted extension, at most ATTACHMENT_MAX_BYTES, UTF-8
    text without NUL bytes. `read` (a file's read method) is only called once the size is known to fit."""
    name = clean_filename(filename)
    media_type = TEXT_MEDIA_TYPES.get(PurePath(name).suffix.lower())
    if media_type is None:
        raise AttachmentRefused(only_text_files_message())
    limit = settings.ATTACHMENT_MAX_BYTES
    if size > limit:
        raise AttachmentRefused(f"{name} is {size:,} bytes; a file may be at most {limit:,} bytes.", status=413)
    data = content if content is not None else read()
    if len(data) > limit:
        raise AttachmentRefused(f"{name} is {len(data):,} bytes; a file may be at most {limit:,} bytes.", status=413)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AttachmentRefused(f"{name} is not UTF-8 text. {only_text_files_message()}") from None
    if "\x00" in text:
        raise AttachmentRefused(f"{name} contains NUL bytes, so it is not a text file.")
    return TextFile(name, media_type, text.removeprefix("\ufeff"), len(data))


def attachment_pk(raw: str) -> int | None:
    """An upload id as the database key, or None for one that cannot be a key (not a number, or too
    large for the column: an IN lookup with such a number fails on SQLite instead of matching nothing)."""
    return int(raw) if raw.isdecimal() and int(raw) < 2**63 else None


def download_url(attachment_id: int) -> str:
    return f"/attachments/{attachment_id}/"


# The one kind of URL a file part holds: this app's own download link (ASCII digits; `\Z`, since `$`
# would also match before a final newline).
DOWNLOAD_URL = re.compile(r"^/attachments/[0-9]{1,18}/\Z")


def file_part(attachment: Any) -> dict[str, Any]:
    """The user message's part for an attachment, in the AI SDK's FileUIPart shape."""
    return {"type": "file", "mediaType": attachment.media_type, "filename": attachment.filename,
            "url": download_url(attachment.pk)}


def attachment_to_dict(attachment: Any) -> dict[str, Any]:
    """The upload view's answer: what `chat.send`'s `attachments` refers to."""
    return {"id": str(attachment.pk), "filename": attachment.filename, "mediaType": attachment.media_type,
            "size": attachment.size}


def text_with_attachments(text: str, attachments: list[Any]) -> str:
    """A user message as the model reads it: its text, then each file as a delimited block. The
    delimiter names the file, so the model can tell files apart and refer to them. A closing
    delimiter inside a file is defused, so a file cannot end its own block and pose as the user."""
    blocks = [text]
    for attachment in attachments:
        content = CLOSING_DELIMITER.sub(r"<\\/\1", attachment.text)
        blocks.append(
            f'<attached-file name="{attachment.filename}" type="{attachment.media_type}">\n'
            f"{content}\n</attached-file>"
        )
    return "\n\n".join(blocks)



def files_of(message: Any) -> list[Any]:
    """A sent message's attachments in the order of its file parts: from selectors.history_for_model's
    prefetch, and without touching the database for a message that has no file parts."""
    urls = [part.get("url") for part in message.parts or [] if isinstance(part, dict) and part.get("type") == "file"]
    if not urls:
        return []
    by_url = {download_url(attachment.pk): attachment for attachment in message.attachments.all()}
    return [by_url[url] for url in urls if url in by_url]
