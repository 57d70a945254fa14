"""MCP servers as tool sources: real stdio and HTTP servers (tests/mcp_test_server.py), failures, config."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from chatrooms import mcp_servers
from chatrooms.mcp_servers import McpToolError, mcp_call_tool, mcp_close_all, mcp_tools, qualified_tool_name
from config.mcp_config import parse_mcp_servers, parse_seconds
from tests.servers import ROOT, free_port

TEST_SERVER = str(Path(__file__).resolve().parent.parent / "mcp_test_server.py")
TEST_TOOLS = ["add", "shout", "fail", "crash", "echo_json"]
# Each test waits this long at most for a server to come up; the usual start takes about a second.
SERVER_START_SECONDS = 20


def stdio_server(name: str, *extra_args: str) -> dict:
    return {"name": name, "command": sys.executable, "args": [TEST_SERVER, "stdio", *extra_args]}


class HttpTestServer:
    """tests/mcp_test_server.py serving streamable HTTP on a free port, as a subprocess."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> HttpTestServer:
        self.process = subprocess.Popen([sys.executable, TEST_SERVER, "http", "--port", str(self.port)], cwd=ROOT)
        deadline = time.monotonic() + SERVER_START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the MCP test server exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)  # polling a port that has no readiness event
        raise RuntimeError("the MCP test server did not start listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def http_server() -> HttpTestServer:
    server = HttpTestServer().start()
    yield server
    server.stop()


@pytest.fixture
def own_http_server() -> HttpTestServer:
    """An HTTP server the test may kill or start late; stopped after the test."""
    server = HttpTestServer()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
async def closed_after_test() -> None:
    yield
    await mcp_close_all()


def names(tools: list[mcp_servers.McpTool]) -> list[str]:
    return [tool.name for tool in tools]


def warnings_naming(caplog: pytest.LogCaptureFixture, server: str) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.levelno == logging.WARNING and f"'{server}'" in record.getMessage()]


# -- stdio and HTTP ----------------------------------------------------------------------------


async def test_a_stdio_servers_tools_are_listed_with_qualified_names_and_schemas(settings):
    settings.MCP_SERVERS = [stdio_server("local")]

    tools = await mcp_tools(wait_seconds=SERVER_START_SECONDS)

    assert names(tools) == [f"local__{name}" for name in TEST_TOOLS]
    add = tools[0]
    assert (add.server, add.remote_name, add.description) == ("local", "add", "Add two integers.")
    assert add.input_schema["type"] == "object"
    assert add.input_schema["properties"]["a"]["type"] == "integer"
    assert add.input_schema["required"] == ["a", "b"]
    assert add.openai_schema()["function"]["parameters"] == add.input_schema
    assert tools[3].input_schema["properties"] == {}  # a tool without arguments


async def test_a_stdio_servers_tools_can_be_called(settings):
    settings.MCP_SERVERS = [stdio_server("local")]
    await mcp_tools(wait_seconds=SERVER_START_SECONDS)

    # mcp 2.x wraps a function's plain return value as {"result": ...} in the structured content.
    assert await mcp_call_tool("local__add", {"a": 2, "b": 3}) == {"result": 5}
    assert await mcp_call_tool("local__shout", {"text": "hello"}) == {"result": "HELLO"}


async def test_an_http_servers_tools_are_listed_and_can_be_called(settings, http_server):
    settings.MCP_SERVERS = [{"name": "web", "url": http_server.url, "headers": {"X-Test": "yes"}}]

    tools = await mcp_tools(wait_seconds=SERVER_START_SECONDS)

    assert names(tools) == [f"web__{name}" for name in TEST_TOOLS]
    assert tools[1].input_schema["properties"]["text"]["type"] == "string"
    assert await mcp_call_tool("web__add", {"a": 2, "b": 3}) == {"result": 5}
    assert await mcp_call_tool("web__shout", {"text": "hello"}) == {"result": "HELLO"}


async def test_a_tool_that_fails_raises_with_its_reason(settings, http_server):
    settings.MCP_SERVERS = [{"name": "web", "url": http_server.url}]
    await mcp_tools(wait_seconds=SERVER_START_SECONDS)

    with pytest.raises(McpToolError, match="the disk is full"):
        await mcp_call_tool("web__fail", {"reason": "the disk is full"})
    with pytest.raises(McpToolError, match="no MCP tool named 'web__missing'"):
        await mcp_call_tool("web__missing", {})


async def test_arguments_that_do_not_fit_the_schema_raise(settings, http_server):
    settings.MCP_SERVERS = [{"name": "web", "url": http_server.url}]
    await mcp_tools(wait_seconds=SERVER_START_SECONDS)

    with pytest.raises(McpToolError, match="valid integer"):
        await mcp_call_tool("web__add", {"a": "two", "b": 3})


# -- servers that are down, slow or die ------------------------------------------------------


async def test_servers_that_are_down_are_skipped_and_logged_while_a_good_one_works(settings, caplog):
    settings.MCP_SERVERS = [
        {"name": "missing", "command": "/nonexistent/mcp-server"},
        {"name": "nowhere", "url": f"http://127.0.0.1:{free_port()}/mcp"},
        stdio_server("local"),
    ]

    tools = await mcp_tools(wait_seconds=SERVER_START_SECONDS)

    assert names(tools) == [f"local__{name}" for name in TEST_TOOLS]
    assert await mcp_call_tool("local__add", {"a": 1, "b": 1}) == {"result": 2}
    assert "No such file or directory" in " ".join(warnings_naming(caplog, "missing"))
    assert "ConnectError" in " ".join(warnings_naming(caplog, "nowhere"))


async def test_a_server_slower_than_the_wait_is_left_out_then_added(settings, http_server):
    import mcp  # noqa: F401  (imported now: the first use imports it, a second of this test's short wait)

    settings.MCP_SERVERS = [{"name": "quick", "url": http_server.url}, stdio_server("slow", "--start-delay", "2.5")]

    first = await mcp_tools(wait_seconds=1.5)
    later = await mcp_tools(wait_seconds=SERVER_START_SECONDS)

    assert {tool.server for tool in first} == {"quick"}
    assert {tool.server for tool in later} == {"quick", "slow"}
    assert await mcp_call_tool("slow__shout", {"text": "late"}) == {"result": "LATE"}


async def test_a_stdio_server_that_dies_is_started_again(settings, caplog):
    settings.MCP_SERVERS = [stdio_server("local")]
    await mcp_tools(wait_seconds=SERVER_START_SECONDS)

    with pytest.raises(McpToolError, match="Connection closed"):
        await mcp_call_tool("local__crash", {})
    tools = await mcp_tools(wait_seconds=SERVER_START_SECONDS)

    assert names(tools) == [f"local__{name}" for name in TEST_TOOLS]
    assert await mcp_call_tool("local__add", {"a": 20, "b": 22}) == {"result": 42}
    assert any("disconnected" in message for message in warnings_naming(caplog, "local"))


async def test_an_http_server_that_dies_is_dropped_and_picked_up_when_it_is_back(
        settings, caplog, monkeypatch, own_http_server):
    monkeypatch.setattr(mcp_servers, "FIRST_RETRY_SECONDS", 0.05)
    monkeypatch.setattr(mcp_servers, "MAX_RETRY_SECONDS", 0.2)
    settings.MCP_SERVERS = [{"name": "web", "url": own_http_server.url}]
    own_http_server.start()
    assert names(await mcp_tools(wait_seconds=SERVER_START_SECONDS))

    own_http_server.stop()
    with pytest.raises(McpToolError, match="'web'"):
        await mcp_call_tool("web__add", {"a": 1, "b": 2})
    # The first reconnect attempt finds nothing listening: the server is left out.
    assert await mcp_tools(wait_seconds=SERVER_START_SECONDS) == []
    with pytest.raises(McpToolError, match="not connected"):
        await mcp_call_tool("web__add", {"a": 1, "b": 2})

    own_http_server.start()
    deadline = time.monotonic() + SERVER_START_SECONDS
    while not await mcp_tools(wait_seconds=0) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # nothing marks a background retry: poll for its outcome

    assert await mcp_call_tool("web__add", {"a": 1, "b": 2}) == {"result": 3}
    unavailable = [message for message in warnings_naming(caplog, "web") if "unavailable" in message]
    assert len(unavailable) == 1, "one warning per failure streak, however many retries"


async def test_closing_ends_the_server_process_and_the_next_call_reconnects(settings):
    settings.MCP_SERVERS = [stdio_server("local")]
    await mcp_tools(wait_seconds=SERVER_START_SECONDS)
    assert len(_stdio_servers_running()) == 1

    await mcp_close_all()

    assert _stdio_servers_running() == []
    assert names(await mcp_tools(wait_seconds=SERVER_START_SECONDS))


def _stdio_servers_running() -> list[int]:
    """Ids of this process's live children that are stdio test servers (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after its ")".
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if int(parent) == os.getpid() and state != "Z" and command[1:3] == [TEST_SERVER.encode(), b"stdio"]:
            found.append(int(entry))
    return found


# -- names and outputs -----------------------------------------------------------------------


def test_tool_names_are_made_fit_for_function_names():
    assert qualified_tool_name("files", "read_file") == "files__read_file"
    dotted = qualified_tool_name("files", "read.file")
    assert dotted.startswith("files__read_file_") and dotted != qualified_tool_name("files", "read_file")
    long = qualified_tool_name("s" * 32, "t" * 60)
    assert len(long) == 64
    assert long != qualified_tool_name("s" * 32, "t" * 61)
    taken = {"files__x"}
    assert qualified_tool_name("files", "x", taken=taken) not in taken
    for name in (dotted, long, qualified_tool_name("files", "x", taken=taken)):
        assert mcp_servers.TOOL_NAME.fullmatch(name)


def test_outputs_are_structured_content_else_text_else_content_blocks():
    from mcp_types import CallToolResult, ImageContent, TextContent

    text = TextContent(text="one")
    image = ImageContent(data="aGk=", mime_type="image/png")
    assert mcp_servers._tool_output(CallToolResult(content=[text], structured_content={"n": 1})) == {"n": 1}
    assert mcp_servers._tool_output(CallToolResult(content=[text, TextContent(text="two")])) == "one\ntwo"
    assert mcp_servers._tool_output(CallToolResult(content=[text, image])) == [
        {"type": "text", "text": "one"}, {"type": "image", "data": "aGk=", "mimeType": "image/png"}]
    with pytest.raises(McpToolError, match="^one$"):
        mcp_servers._tool_output(CallToolResult(content=[text], is_error=True))


async def test_no_servers_means_no_tools(settings):
    settings.MCP_SERVERS = []
    assert await mcp_tools() == []


# -- the MCP_SERVERS setting -------------------------------------------------------------------


def test_unset_or_blank_means_no_servers():
    assert parse_mcp_servers("") == []
    assert parse_mcp_servers("  \n") == []
    assert parse_mcp_servers("[]") == []


def test_entries_are_completed_with_their_optional_keys():
    servers = parse_mcp_servers('[{"name": "files", "command": "python", "args": ["-m", "x"], "env": {"A": "1"}},'
                                ' {"name": "web", "url": "https://example.com/mcp"}]')
    assert servers == [
        {"name": "files", "command": "python", "args": ["-m", "x"], "env": {"A": "1"}},
        {"name": "web", "url": "https://example.com/mcp", "headers": {}},
    ]


@pytest.mark.parametrize(("text", "message"), [
    ("[{name: 1}]", "MCP_SERVERS is not valid JSON"),
    ('{"name": "files"}', "must be a JSON list"),
    ('[{"command": "python"}]', 'MCP_SERVERS\\[0\\] has no "name"'),
    ('[{"name": "a", "command": "x"}, {"name": "a", "url": "http://h/mcp"}]',
     "MCP_SERVERS\\[1\\]: the name 'a' is used twice"),
    ('[{"name": "has space", "command": "x"}]', "MCP_SERVERS\\[0\\]: the name 'has space' must be 1 to 32"),
    ('[{"name": "' + "n" * 33 + '", "command": "x"}]', "must be 1 to 32"),
    ('[{"name": "both", "command": "x", "url": "http://h/mcp"}]', "\\('both'\\) must have either"),
    ('[{"name": "neither"}]', "\\('neither'\\) must have either"),
    ('[{"name": "files", "command": "x", "arg": ["y"]}]', "\\('files'\\): unknown key\\(s\\) arg"),
    ('[{"name": "files", "command": "x", "args": "-m x"}]', '"args" must be a list of strings'),
    ('[{"name": "files", "command": "x", "env": {"A": 1}}]', '"env" must be an object of strings'),
    ('[{"name": "web", "url": "ftp://h/mcp"}]', "\\('web'\\): \"url\" must be an http"),
    ('[{"name": "web", "url": "http://h/mcp", "headers": ["x"]}]', '"headers" must be an object of strings'),
    ('["files"]', "MCP_SERVERS\\[0\\] must be an object"),
])
def test_a_bad_setting_names_the_problem_and_the_entry(text, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        parse_mcp_servers(text)


def test_seconds_are_numbers():
    assert parse_seconds("MCP_WAIT_SECONDS", "", 5) == 5
    assert parse_seconds("MCP_WAIT_SECONDS", "0.5", 5) == 0.5
    assert parse_seconds("MCP_WAIT_SECONDS", "2", 5) == 2
    for bad in ("soon", "-1", "nan"):
        with pytest.raises(ImproperlyConfigured, match="MCP_WAIT_SECONDS must be a number of seconds"):
            parse_seconds("MCP_WAIT_SECONDS", bad, 5)


def test_a_bad_setting_stops_the_settings_import():
    env = {**os.environ, "MCP_SERVERS": '[{"name": "files", "command": "x"}, {"name": "files", "command": "y"}]'}
    result = subprocess.run([sys.executable, "-c", "import config.settings"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "ImproperlyConfigured: MCP_SERVERS[1]: the name 'files' is used twice" in result.stderr
