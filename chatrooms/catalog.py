"""The models a room may use, from LLM_MODEL and LLM_MODELS; the first is the default."""
from __future__ import annotations

from django.conf import settings

BUILTIN_MODEL = "local/demo"
BUILTIN_LABEL = "Built-in demo (offline)"


def model_choices() -> tuple[dict[str, str], ...]:
    """[{id, label}] in the order of `hello.models`. Entries are "id" or "id=Label"."""
    entries = list(settings.LLM_MODELS)
    default = settings.LLM_MODEL or (entries[0].split("=", 1)[0].strip() if entries else BUILTIN_MODEL)
    choices: list[dict[str, str]] = []
    for entry in [default, *entries]:
        model_id, _, label = entry.partition("=")
        model_id = model_id.strip()
        if model_id and all(choice["id"] != model_id for choice in choices):
            label = label.strip() or (BUILTIN_LABEL if model_id == BUILTIN_MODEL else model_id)
            choices.append({"id": model_id, "label": label})
        elif model_id and label.strip():
            next(choice for choice in choices if choice["id"] == model_id)["label"] = label.strip()
    return tuple(choices)


def default_model() -> str:
    return model_choices()[0]["id"]


def is_known_model(model_id: str) -> bool:
    return any(choice["id"] == model_id for choice in model_choices())


def model_for_room(stored: str) -> str:
    """The model a room uses now: its own if still offered, else the default."""
    return stored if stored and is_known_model(stored) else default_model()
