"""Tools from the MCP servers of MCP_SERVERS: one long-lived session per server and event loop."""
from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import importlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

# OpenAI's rule for function names, which litellm passes on to every provider.
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
# Bounds each request of the handshake and the tool listing: a server that starts but never answers.
CONNECT_TIMEOUT_SECONDS = 30.0
FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 30.0
CLOSE_TIMEOUT_SECONDS = 15.0
LIST_PAGES_MAX = 100


class McpToolError(Exception):
    """An MCP tool call that gave no result: the tool reported an error, or its server is unreachable."""


@dataclass(frozen=True)
class McpTool:
    name: str  # "<server>__<tool>", fit for an OpenAI function name
    server: str
    remote_name: str
    description: str
    input_schema: dict[str, Any] = field(default_factory=lambda: dict(EMPTY_SCHEMA))

    def openai_schema(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.input_schema}}


async def mcp_tools(wait_seconds: float | None = None) -> list[McpTool]:
    """The tools of the configured servers that are connected, in the order of MCP_SERVERS.

    The first call on an event loop starts connecting to every server. Each call waits up to
    `wait_seconds` (default MCP_WAIT_SECONDS) for servers still making their first attempt, or
    reconnecting after a working session ended; servers that are failing are left out, never raised.
    """
    pool = await _pool_for_running_loop()
    await pool.wait_settled(settings.MCP_WAIT_SECONDS if wait_seconds is None else wait_seconds)
    found: list[McpTool] = []
    taken: set[str] = set()
    for link in pool.links:
        session = link.session
        if session is None:
            continue
        for remote in session.tools.values():
            # "a__b" + "c" and "a" + "b__c" both qualify to "a__b__c": the earlier server keeps it.
            if remote.name not in taken:
                taken.add(remote.name)
                found.append(remote)
    return found


async def mcp_call_tool(name: str, arguments: dict[str, Any]) -> Any:
    """Call an MCP tool by its qualified name; returns its output as JSON-ready data.

    The output is the result's structured content if it has one, else the text of its text blocks
    (or the content blocks as dicts when not all are text). Raises McpToolError when the tool
    reports an error, its server is not connected, or the call fails or takes longer than
    MCP_CALL_TIMEOUT_SECONDS.
    """
    pool = await _pool_for_running_loop()
    link = pool.link_for_tool(name)
    if link is None:
        # A call can come before any listing in this process (an approved call after a restart).
        await pool.wait_settled(settings.MCP_WAIT_SECONDS)
        link = pool.link_for_tool(name)
    if link is None:
        raise McpToolError(f"there is no MCP tool named {name!r}")
    await pool.wait_settled(settings.MCP_WAIT_SECONDS, links=[link])
    session = link.session
    if session is None:
        raise McpToolError(f"the MCP server {link.name!r} is not connected")
    remote = session.tools.get(name)
    if remote is None:
        raise McpToolError(f"the MCP server {link.name!r} no longer offers {name!r}")
    timeout = settings.MCP_CALL_TIMEOUT_SECONDS
    try:
        async with asyncio.timeout(timeout):
            result = await session.client.call_tool(remote.remote_name, arguments, read_timeout_seconds=timeout)
    except TimeoutError:
        raise McpToolError(f"the MCP server {link.name!r} did not answer within {timeout:g} s") from None
    except Exception as error:
        if _is_connection_loss(error):
            link.drop(session, describe_failure(error))
        raise McpToolError(f"calling {remote.remote_name!r} on the MCP server {link.name!r} failed: "
                           f"{describe_failure(error)}") from error
    return _tool_output(result)


async def mcp_close_all() -> None:
    """Close this event loop's sessions and stop their subprocesses; the next mcp_tools reconnects."""
    pool = _POOLS.pop(asyncio.get_running_loop(), None)
    if pool is not None:
        await pool.close()


# -- one pool of server links per event loop ----------------------------------------------------

# Keyed by loop: a session's streams and tasks belong to the loop that opened them (pytest-asyncio
# makes a loop per test; daphne has one per process).
_POOLS: dict[asyncio.AbstractEventLoop, _ServerPool] = {}


async def _pool_for_running_loop() -> _ServerPool:
    loop = asyncio.get_running_loop()
    for other in [other for other in _POOLS if other.is_closed()]:
        del _POOLS[other]
    # Checked at startup (config/mcp_config.py); a copy, so that a later change is noticed.
    servers = copy.deepcopy(list(settings.MCP_SERVERS))
    pool = _POOLS.get(loop)
    if pool is not None and pool.servers != servers:
        # The setting changed (tests override it): start over with the new servers.
        del _POOLS[loop]
        await pool.close()
        pool = None
    if pool is None:
        pool = _POOLS[loop] = _ServerPool(servers)
        pool.start()
    return pool


class _ServerPool:
    """Links to all configured servers, for one event loop."""

    def __init__(self, servers: list[dict[str, Any]]) -> None:
        self.servers = servers
        self.links = [_ServerLink(server) for server in servers]

    def start(self) -> None:
        for link in self.links:
            link.task = asyncio.get_running_loop().create_task(link.keep_connected(), name=f"mcp-server-{link.name}")

    async def wait_settled(self, seconds: float, links: list[_ServerLink] | None = None) -> None:
        unsettled = [link for link in links or self.links if not link.settled.is_set()]
        waits = [asyncio.ensure_future(link.settled.wait()) for link in unsettled]
        if not waits:
            return
        try:
            await asyncio.wait(waits, timeout=seconds)
        finally:
            for wait in waits:
                wait.cancel()

    def link_for_tool(self, name: str) -> _ServerLink | None:
        # Config order, as in mcp_tools; a server that is reconnecting still owns its last-known tools.
        return next((link for link in self.links if name in link.known_tools), None)

    async def close(self) -> None:
        tasks = [link.task for link in self.links if link.task is not None and not link.task.done()]
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        # Bounded: the SDK's stdio shutdown waits seconds for a stubborn process at most, but an HTTP
        # server that went silent could hold the session's closing request for its connect timeout.
        _, pending = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_SECONDS)
        for task in pending:
            logger.warning("MCP server %s: still closing after %g s; left behind",
                           task.get_name(), CLOSE_TIMEOUT_SECONDS)


@dataclass(eq=False)
class _Session:
    """One open session with a server and the tools it listed."""

    client: Any  # mcp.Client
    tools: dict[str, McpTool]
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = "the connection closed"
    published: bool = False  # its tools were offered: its end is a disconnect, not a failed attempt


class _ServerLink:
    """One configured server: the task that keeps a session open with it, reconnecting with backoff."""

    def __init__(self, server: dict[str, Any]) -> None:
        self.server = server
        self.name: str = server["name"]
        self.task: asyncio.Task[None] | None = None
        self.session: _Session | None = None  # set while connected and listed
        self.known_tools: set[str] = set()  # qualified names of the last listing, kept while reconnecting
        # Set once an attempt has succeeded or failed; clear while a first attempt or a reconnect
        # after a working session is under way, which is what mcp_tools waits for.
        self.settled = asyncio.Event()

    def drop(self, session: _Session, reason: str) -> None:
        """End `session` if it is the current one: called from any task that sees it gone."""
        if self.session is session:
            self.session = None
            self.settled.clear()
        if not session.ended.is_set():
            session.reason = reason
            session.ended.set()

    async def keep_connected(self) -> None:
        await _import_mcp()
        retry_seconds = FIRST_RETRY_SECONDS
        failing = False
        while True:
            session = _Session(client=None, tools={})
            try:
                await self._connect_and_hold(session)
            except Exception as error:  # anything a transport can raise: this server is down, the others are not
                if not session.published:
                    # Once per failure streak: a server that stays down does not fill the log.
                    log = logger.debug if failing else logger.warning
                    log("MCP server %r is unavailable: %s (retrying in the background)",
                        self.name, describe_failure(error))
                    failing = True
                    self.settled.set()
                    await asyncio.sleep(retry_seconds)
                    retry_seconds = min(retry_seconds * 2, MAX_RETRY_SECONDS)
                    continue
                # A working session broke (an HTTP server's transport fails on the next request).
                self.drop(session, describe_failure(error))
            logger.warning("MCP server %r disconnected: %s (reconnecting)", self.name, session.reason)
            failing = False
            retry_seconds = FIRST_RETRY_SECONDS
            await asyncio.sleep(retry_seconds)

    async def _connect_and_hold(self, session: _Session) -> None:
        """Connect, list the tools, publish them, and hold the session open until it ends."""
        from mcp import Client, Implementation

        # The SDK's context managers are entered and left in this task only: anyio requires it of
        # their cancel scopes. Other tasks just send requests through the open session.
        async with contextlib.AsyncExitStack() as stack:
            transport = _WatchedTransport(await self._open_transport(stack),
                                          on_end=lambda: self.drop(session, "the server closed the connection"))
            client = await stack.enter_async_context(Client(
                transport, read_timeout_seconds=CONNECT_TIMEOUT_SECONDS,
                client_info=Implementation(name="chatrooms", version="1")))
            session.client = client
            session.tools = await self._list_tools(client)
            if session.ended.is_set():  # the server went away while listing
                raise ConnectionError(session.reason)
            session.published = True
            self.session = session
            self.known_tools = set(session.tools)
            self.settled.set()
            logger.info("MCP server %r connected: %d tool(s)", self.name, len(session.tools))
            await session.ended.wait()

    async def _open_transport(self, stack: contextlib.AsyncExitStack) -> Any:
        if "command" in self.server:
            from mcp import StdioServerParameters
            from mcp.client.stdio import stdio_client

            parameters = StdioServerParameters(command=self.server["command"], args=self.server.get("args", []),
                                               env=self.server.get("env") or None)
            return stdio_client(parameters)
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        http_client = None
        if self.server.get("headers"):
            # The SDK's default timeouts (a long read: a response may be an open event stream), plus
            # the headers. The transport does not close a client it was given.
            http_client = await stack.enter_async_context(httpx2.AsyncClient(
                headers=self.server["headers"], timeout=httpx2.Timeout(30.0, read=300.0)))
        return streamable_http_client(self.server["url"], http_client=http_client)

    async def _list_tools(self, client: Any) -> dict[str, McpTool]:
        listed: dict[str, McpTool] = {}
        cursor = None
        for _ in range(LIST_PAGES_MAX):  # a server whose cursor never ends cannot hang the connection
            page = await client.list_tools(cursor=cursor)
            for tool in page.tools:
                name = qualified_tool_name(self.name, tool.name, taken=listed)
                listed[name] = McpTool(name=name, server=self.name, remote_name=tool.name,
                                       description=tool.description or tool.title or "",
                                       input_schema=_input_schema(tool.input_schema))
            cursor = page.next_cursor
            if cursor is None:
                break
        return listed


def qualified_tool_name(server: str, remote_name: str, taken: Any = ()) -> str:
    """"<server>__<tool>", with characters a function name may not have replaced by "_"; cut to
    64 characters and given a short hash of the tool's name when that changed it or it is `taken`."""
    plain = f"{server}__{remote_name}"
    name = re.sub(r"[^a-zA-Z0-9_-]", "_", plain)
    if name == plain and len(name) <= 64 and name not in taken:
        return name
    suffix = "_" + hashlib.sha256(remote_name.encode()).hexdigest()[:8]
    name = name[: 64 - len(suffix)] + suffix
    while name in taken:  # two tools of one server whose names hash alike
        suffix = "_" + hashlib.sha256(suffix.encode()).hexdigest()[:8]
        name = name[: 64 - len(suffix)] + suffix
    return name


def _input_schema(schema: Any) -> dict[str, Any]:
    if not isinstance(schema, dict) or not schema:
        return dict(EMPTY_SCHEMA)
    schema = dict(schema)
    # Some providers refuse an object schema without properties, which MCP servers may send.
    if schema.get("type") == "object" and "properties" not in schema:
        schema["properties"] = {}
    return schema


def _tool_output(result: Any) -> Any:
    texts = [block.text for block in result.content if getattr(block, "type", None) == "text"]
    if result.is_error:
        raise McpToolError("\n".join(texts) or "the tool reported an error")
    if result.structured_content is not None:
        return result.structured_content
    if len(texts) == len(result.content):
        return "\n".join(texts)
    return [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content]


def describe_failure(error: BaseException) -> str:
    """The first real reason inside an error: anyio wraps a transport's failures in exception groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _is_connection_loss(error: BaseException) -> bool:
    from mcp import MCPError
    from mcp_types import CONNECTION_CLOSED, INVALID_REQUEST

    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if isinstance(error, MCPError):
        # An HTTP server that restarted answers the old session's requests with 404, which the SDK
        # reports as "Session terminated"; the session has to be opened again.
        return error.code == CONNECTION_CLOSED or (error.code == INVALID_REQUEST and "Session terminated" in str(error))
    return isinstance(error, (OSError, EOFError))


async def _import_mcp() -> None:
    # The SDK takes about a second to import: off the event loop, so the worker's sockets keep moving.
    for module in ("mcp", "mcp.client.stdio", "mcp.client.streamable_http"):
        await asyncio.to_thread(importlib.import_module, module)


class _WatchedTransport:
    """An MCP transport that calls `on_end` when the server's side ends (a stdio server exited).

    The SDK's session just stops reading then; without this the link would hold a dead session
    until a call failed.
    """

    def __init__(self, transport: Any, on_end: Any) -> None:
        self.transport = transport
        self.on_end = on_end

    async def __aenter__(self) -> tuple[Any, Any]:
        read_stream, write_stream = await self.transport.__aenter__()
        return _WatchedReadStream(read_stream, self.on_end), write_stream

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self.transport.__aexit__(*exc_info)


class _WatchedReadStream:
    def __init__(self, stream: Any, on_end: Any) -> None:
        self.stream = stream
        self.on_end = on_end

    @property
    def last_context(self) -> Any:
        # The SDK's dispatcher reads the sender's context of each message from its stream, if any.
        return getattr(self.stream, "last_context", None)

    async def receive(self) -> Any:
        import anyio

        try:
            return await self.stream.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self.on_end()
            raise

    def __aiter__(self) -> _WatchedReadStream:
        return self

    async def __anext__(self) -> Any:
        import anyio

        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> _WatchedReadStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()
