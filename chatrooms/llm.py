"""Reaching the model: litellm imported and configured once (lazily: the import takes seconds), and the
provider options (LLM_API_BASE, LLM_API_KEY) of a room's model."""
from __future__ import annotations

import threading
from functools import cache
from types import ModuleType
from typing import Any

from django.conf import settings

from .catalog import BUILTIN_MODEL


@cache
def get_litellm() -> ModuleType:
    """Import and configure litellm on first use: the import takes seconds, and most commands never need it."""
    import litellm

    from .local_model import PROVIDER, LocalDemoModel

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    # Some model names (llama-*, command-r) make litellm fetch a tokenizer from Hugging Face on
    # every count; the bundled tiktoken ones are close enough and need no network.
    litellm.disable_hf_tokenizer_download = True
    # httpx, not aiohttp: closing an httpx stream closes the model's connection at once, which
    # is what makes chat.cancel stop the model's work.
    litellm.disable_aiohttp_transport = True
    litellm.custom_provider_map = [
        *[entry for entry in litellm.custom_provider_map if entry.get("provider") != PROVIDER],
        {"provider": PROVIDER, "custom_handler": LocalDemoModel()},
    ]
    return litellm


def warm_up_in_background() -> None:
    """Import litellm on a thread while a server process starts, so that its first answer does not
    wait seconds for the import."""
    threading.Thread(target=get_litellm, name="litellm-import", daemon=True).start()


def provider_options(model: str) -> dict[str, Any]:
    """Where and how to reach a model: LLM_API_BASE and LLM_API_KEY for every model but the built-in one."""
    if model == BUILTIN_MODEL:
        return {}
    options: dict[str, Any] = {"max_retries": 0}
    if settings.LLM_API_BASE:
        options["api_base"] = settings.LLM_API_BASE
    if settings.LLM_API_KEY or settings.LLM_API_BASE:
        options["api_key"] = settings.LLM_API_KEY or "no-key"
    return options
