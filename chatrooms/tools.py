"""The tools the model may call: declare one with @tool and it joins the registry."""
from __future__ import annotations

import inspect
import json
import random
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from asgiref.sync import sync_to_async

TOOL_OUTPUT_MAX_CHARS = 16_000
JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


class ToolInputError(ValueError):
    """The model called a tool with arguments that do not fit its schema."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    execute: Callable[..., Any]

    def openai_schema(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


REGISTRY: dict[str, Tool] = {}


def _schema_for(function: Callable[..., Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(function)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, parameter in inspect.signature(function).parameters.items():
        json_type = JSON_TYPES.get(hints.get(name, str), "string")
        properties[name] = {"type": json_type}
        if parameter.default is inspect.Parameter.empty:
            required.append(name)
        else:
            properties[name]["default"] = parameter.default
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def tool(description: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a function as a tool; its JSON schema comes from its type hints and defaults."""

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        REGISTRY[function.__name__] = Tool(function.__name__, description, _schema_for(function), function)
        return function

    return register


def _check_arguments(spec: Tool, arguments: Any) -> dict[str, Any]:
    if not isinstance(arguments, dict):
        raise ToolInputError("the arguments must be a JSON object")
    properties = spec.parameters["properties"]
    unknown = set(arguments) - set(properties)
    if unknown:
        raise ToolInputError(f"unknown argument(s): {', '.join(sorted(unknown))}")
    missing = [name for name in spec.parameters["required"] if name not in arguments]
    if missing:
        raise ToolInputError(f"missing argument(s): {', '.join(missing)}")
    python_types = {value: key for key, value in JSON_TYPES.items()}
    for name, value in arguments.items():
        expected = python_types[properties[name]["type"]]
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ToolInputError(f"`{name}` must be a {properties[name]['type']}")
    return arguments


async def run_tool(name: str, arguments: Any) -> Any:
    """Run a registered tool; raises ToolInputError or whatever the tool raises."""
    spec = REGISTRY.get(name)
    if spec is None:
        raise ToolInputError(f"there is no tool named {name!r}")
    arguments = _check_arguments(spec, arguments)
    if inspect.iscoroutinefunction(spec.execute):
        output = await spec.execute(**arguments)
    else:
        output = await sync_to_async(spec.execute, thread_sensitive=False)(**arguments)
    text = json.dumps(output, default=str)
    if len(text) > TOOL_OUTPUT_MAX_CHARS:
        return {"truncated": True, "text": text[:TOOL_OUTPUT_MAX_CHARS]}
    return json.loads(text)


# -- built-in tools ----------------------------------------------------------------------------


@tool("Get the current date and time in UTC, as ISO 8601.")
def get_current_time() -> dict[str, str]:
    now = datetime.now(timezone.utc)
    return {"utc": now.isoformat(timespec="seconds").replace("+00:00", "Z"), "weekday": now.strftime("%A")}


@tool("Roll one fair die with the given number of sides (2 to 1000) and return the result.")
def roll_dice(sides: int = 6) -> dict[str, int]:
    if not 2 <= sides <= 1000:
        raise ToolInputError("sides must be between 2 and 1000")
    return {"sides": sides, "result": random.randint(1, sides)}
