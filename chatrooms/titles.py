"""Titles for rooms still named by default, from their first exchange: a small model call, or a heuristic."""
from __future__ import annotations

import asyncio
import logging
import re

from channels.db import database_sync_to_async
from django.conf import settings

from . import selectors, services
from .catalog import BUILTIN_MODEL
from .llm import get_litellm, provider_options

logger = logging.getLogger(__name__)

TITLE_MAX_CHARS = 60
TITLE_MAX_WORDS = 6
TITLE_PROMPT = (
    "Write a title of at most six words for the conversation below. "
    "Answer with the title alone: no quotes, no punctuation at the end."
)
_pending: set[asyncio.Task[None]] = set()  # strong references: the loop keeps only weak ones


def heuristic_title(text: str) -> str:
    """The first words of the first question, cleaned: what the offline model names a room."""
    text = re.sub(r"```.*?(```|$)", " ", text, flags=re.DOTALL)  # code says little about the topic
    text = re.sub(r"[`*_#>\[\]()]", " ", text)
    sentence = re.split(r"(?<=[.!?])\s|\n", text.strip(), maxsplit=1)[0]
    words = sentence.split()[:TITLE_MAX_WORDS]
    title = _fit(" ".join(words)).rstrip(".,;:!?-")
    return title[:1].upper() + title[1:] if title else "Chat"


def clean_model_title(text: str) -> str:
    """A model's answer as a title: its first line, without quotes, a `Title:` prefix or Markdown."""
    line = next((line for line in text.strip().splitlines() if line.strip()), "")
    line = re.sub(r"[*_#`\"“”]", "", line)
    line = re.sub(r"^\s*title\s*:\s*", "", line, flags=re.IGNORECASE).strip(" '.")
    return _fit(" ".join(line.split()))


def _fit(title: str) -> str:
    if len(title) <= TITLE_MAX_CHARS:
        return title
    return title[:TITLE_MAX_CHARS].rsplit(" ", 1)[0] or title[:TITLE_MAX_CHARS]


async def title_for_exchange(question: str, answer: str, model: str) -> str:
    if model == BUILTIN_MODEL:
        return heuristic_title(question)
    try:
        response = await get_litellm().acompletion(
            model=model,
            messages=[{"role": "system", "content": TITLE_PROMPT},
                      {"role": "user", "content": f"User: {question[:2000]}\n\nAssistant: {answer[:2000]}"}],
            max_tokens=24,
            timeout=settings.LLM_TIMEOUT_SECONDS,
            **provider_options(model),
        )
        title = clean_model_title(response.choices[0].message.content or "")
    except Exception:  # a title is a nicety: the heuristic will do
        logger.warning("the model could not title a room; using its first words", exc_info=True)
        title = ""
    return title or heuristic_title(question)


async def title_room(*, room_id: int, model: str) -> None:
    exchange = await database_sync_to_async(selectors.first_exchange_for_room, thread_sensitive=False)(room_id=room_id)
    if exchange is None:
        return
    title = await title_for_exchange(*exchange, model=model)
    await database_sync_to_async(services.room_set_automatic_title, thread_sensitive=False)(room_id=room_id, title=title)


def title_room_soon(*, room_id: int, model: str) -> None:
    """Title the room in the background; the answer's stream has already ended."""
    task = asyncio.get_running_loop().create_task(title_room(room_id=room_id, model=model), name=f"title-{room_id}")
    _pending.add(task)
    task.add_done_callback(_pending.discard)
    task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("titling a room failed", exc_info=task.exception())
