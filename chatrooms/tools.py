"""The tools the model may call: declare one with @tool (or @client_tool) and it joins the registry."""
from __future__ import annotations

import importlib
import inspect
import json
import re
import types
import typing
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any, Literal

from django.conf import settings

from streaming.safe_json import storable

TOOL_OUTPUT_MAX_CHARS = 16_000
TOOL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CLIENT_TOOLS_MAX_COUNT = 16
CLIENT_TOOL_SCHEMA_MAX_BYTES = 4096
CLIENT_TOOL_DESCRIPTION_MAX_CHARS = 1000
JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object"}


class ToolInputError(ValueError):
    """The model called a tool with arguments that do not fit its schema."""


class ToolDeclarationError(ValueError):
    """A client declared a tool that cannot be offered to the model."""


@dataclass
class ToolContext:
    """What a tool may know of the reply that called it, and how it reports progress.

    A tool receives it when it has a parameter annotated `ToolContext`; that parameter is not part
    of the schema the model sees."""

    room_id: int
    user_id: int | None  # who asked for the answer
    approver_id: int | None  # who approved this call, for tools that need approval
    tool_call_id: str
    body: dict[str, Any]  # chat.send's `body`, as the client sent it
    emit_data: Callable[..., None] = field(repr=False, default=lambda *args, **kwargs: None)

    def data(self, name: str, data: Any, *, id: str | None = None, transient: bool = False) -> None:  # noqa: A002
        """Send a `data-<name>` part: same name and id updates in place; transient is live only."""
        self.emit_data(name, data, id=id, transient=transient)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    # None: a client-side tool, which the browser (or any client) answers with `tool.result`.
    execute: Callable[..., Any] | None = None
    # Ask a person before running: a bool, or a function of the call's arguments.
    needs_approval: bool | Callable[[dict[str, Any]], bool] = False
    context_parameter: str | None = None

    @property
    def runs_on_client(self) -> bool:
        return self.execute is None

    def approval_required(self, arguments: dict[str, Any]) -> bool:
        if callable(self.needs_approval):
            return bool(self.needs_approval(arguments))
        return self.needs_approval

    def openai_schema(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


REGISTRY: dict[str, Tool] = {}


def _json_schema_for(annotation: Any) -> dict[str, Any]:
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is Annotated:
        schema = _json_schema_for(arguments[0])
        descriptions = [a for a in arguments[1:] if isinstance(a, str)]
        return {**schema, "description": descriptions[0]} if descriptions else schema
    if origin is Literal:
        return {"enum": list(arguments)}
    if origin in (typing.Union, types.UnionType):
        options = [a for a in arguments if a is not type(None)]
        return _json_schema_for(options[0]) if len(options) == 1 else {}
    if origin in (list, tuple, set, frozenset):
        return {"type": "array", "items": _json_schema_for(arguments[0]) if arguments else {}}
    if origin is dict:
        return {"type": "object"}
    return {"type": JSON_TYPES[annotation]} if annotation in JSON_TYPES else {}


def _describe_function(function: Callable[..., Any]) -> tuple[dict[str, Any], str | None]:
    """The JSON schema of a function's parameters, from its type hints and defaults, and the name
    of its ToolContext parameter if it has one."""
    hints = typing.get_type_hints(function, include_extras=True)
    properties: dict[str, Any] = {}
    required: list[str] = []
    context_parameter = None
    for name, parameter in inspect.signature(function).parameters.items():
        annotation = hints.get(name, str)
        if annotation is ToolContext:
            context_parameter = name
            continue
        properties[name] = _json_schema_for(annotation)
        if parameter.default is inspect.Parameter.empty:
            required.append(name)
        elif parameter.default is not None:
            properties[name]["default"] = parameter.default
    schema = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return schema, context_parameter


def tool(
    description: str, *, needs_approval: bool | Callable[[dict[str, Any]], bool] = False, name: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a function (sync, async, or an async generator that yields progress) as a tool the
    server runs. Its JSON schema comes from its type hints and defaults."""

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        parameters, context_parameter = _describe_function(function)
        register_tool(Tool(name or function.__name__, description, parameters, function, needs_approval,
                           context_parameter))
        return function

    return register


def client_tool(description: str, *, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a tool that the client answers (`tool.result`); the function only gives its schema."""

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        parameters, _context = _describe_function(function)
        register_tool(Tool(name or function.__name__, description, parameters))
        return function

    return register


def register_tool(spec: Tool) -> Tool:
    if not TOOL_NAME_PATTERN.match(spec.name):
        raise ValueError(f"tool name {spec.name!r} must be 1 to 64 letters, digits, '_' or '-'")
    REGISTRY[spec.name] = spec
    return spec


# The built-in tools: imported by name like a project's tool modules, so that the registry (which the
# services use) imports none of the services the built-ins call.
BUILTIN_TOOL_MODULE = "chatrooms.builtin_tools"


@cache
def load_tool_modules() -> tuple[str, ...]:
    """Import the built-in tools and the project's tool modules (setting TOOL_MODULES) once, so their
    @tool functions register (the built-ins first)."""
    modules = (BUILTIN_TOOL_MODULE, *settings.TOOL_MODULES)
    for module in modules:
        importlib.import_module(module)
    return modules


def registered_tools() -> dict[str, Tool]:
    load_tool_modules()
    return dict(REGISTRY)


# -- tools a client declares for one request ----------------------------------------------------


def client_tools_from_body(body: dict[str, Any] | None, taken: set[str]) -> list[Tool]:
    """The tools in `body.clientTools`: `[{name, description?, inputSchema?}]`, checked; raises
    ToolDeclarationError with a message fit for the client."""
    declared = (body or {}).get("clientTools")
    if declared is None:
        return []
    if not isinstance(declared, list):
        raise ToolDeclarationError("body.clientTools must be a list of {name, description, inputSchema}.")
    if len(declared) > CLIENT_TOOLS_MAX_COUNT:
        raise ToolDeclarationError(f"body.clientTools may declare at most {CLIENT_TOOLS_MAX_COUNT} tools.")
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    specs: list[Tool] = []
    seen: set[str] = set()
    for position, entry in enumerate(declared):
        where = f"body.clientTools[{position}]"
        if not isinstance(entry, dict) or set(entry) - {"name", "description", "inputSchema"}:
            raise ToolDeclarationError(f"{where} must be an object with name, description and inputSchema only.")
        name = entry.get("name")
        if not isinstance(name, str) or not TOOL_NAME_PATTERN.match(name):
            raise ToolDeclarationError(f"{where}.name must be 1 to 64 letters, digits, '_' or '-'.")
        if name in taken or name in seen:
            raise ToolDeclarationError(f"{where}.name {name!r} is already the name of another tool.")
        description = entry.get("description", "")
        if not isinstance(description, str) or len(description) > CLIENT_TOOL_DESCRIPTION_MAX_CHARS:
            raise ToolDeclarationError(
                f"{where}.description must be a string of at most {CLIENT_TOOL_DESCRIPTION_MAX_CHARS} characters.")
        schema = entry.get("inputSchema", {"type": "object", "properties": {}})
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise ToolDeclarationError(f"{where}.inputSchema must be a JSON schema of type object.")
        if len(json.dumps(schema)) > CLIENT_TOOL_SCHEMA_MAX_BYTES:
            raise ToolDeclarationError(f"{where}.inputSchema must be at most {CLIENT_TOOL_SCHEMA_MAX_BYTES} bytes.")
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as error:
            raise ToolDeclarationError(f"{where}.inputSchema is not a valid JSON schema: {error.message}") from None
        seen.add(name)
        specs.append(Tool(name, description, schema))
    return specs


# -- running ------------------------------------------------------------------------------------


def check_arguments(spec: Tool, arguments: Any) -> dict[str, Any]:
    """The call's arguments if they fit the tool's schema; raises ToolInputError saying why not."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    if not isinstance(arguments, dict):
        raise ToolInputError("the arguments must be a JSON object")
    error = best_match(Draft202012Validator(spec.parameters).iter_errors(arguments))
    if error is not None:
        where = "/".join(str(step) for step in error.absolute_path)
        raise ToolInputError(f"{where}: {error.message}" if where else error.message)
    return arguments


def cap_output(output: Any) -> Any:
    """A tool's output (a server tool's, an MCP server's or a client's) as JSON data that can be
    stored and sent (no NaN, lone surrogate or U+0000: see streaming.safe_json), cut to
    TOOL_OUTPUT_MAX_CHARS with a marker when larger. The model is told the same."""
    output = storable(output)
    text = json.dumps(output, ensure_ascii=False)
    if len(text) > TOOL_OUTPUT_MAX_CHARS:
        return {"truncated": True, "originalChars": len(text), "text": text[:TOOL_OUTPUT_MAX_CHARS]}
    return output


async def run_tool(spec: Tool, arguments: dict[str, Any], context: ToolContext) -> AsyncIterator[tuple[Any, bool]]:
    """Run a server tool: yields (output, final). An async generator tool yields its progress
    first (final False); its last value is the output. Raises whatever the tool raises."""
    from channels.db import database_sync_to_async

    assert spec.execute is not None
    call_arguments = dict(arguments)
    if spec.context_parameter:
        call_arguments[spec.context_parameter] = context
    if inspect.isasyncgenfunction(spec.execute):
        # Each value is shown as soon as it is yielded; the last one, once the tool ends, is final.
        last: Any = None
        async for progress in spec.execute(**call_arguments):
            last = cap_output(progress)
            yield last, False
        yield last, True
        return
    if inspect.iscoroutinefunction(spec.execute):
        output = await spec.execute(**call_arguments)
    else:
        # Off the shared database thread: a slow tool must not stall every socket of the worker.
        output = await database_sync_to_async(spec.execute, thread_sensitive=False)(**call_arguments)
    yield cap_output(output), True
