"""A small MCP server for the tests: `python tests/mcp_test_server.py stdio` or `... http --port N`."""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("chatrooms-test", log_level="WARNING")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def shout(text: str) -> str:
    """Return the text in upper case."""
    return text.upper()


@server.tool()
def fail(reason: str) -> str:
    """Always fail, with the given reason."""
    # ToolError, not any exception: mcp 2.x hides other exceptions' messages from the client.
    raise ToolError(reason)


@server.tool()
def crash() -> str:
    """Exit the server process at once, without answering (for reconnect tests)."""
    os._exit(3)


@server.tool()
def echo_json(text: str) -> Any:
    """Return what Python's lenient json module makes of the text (NaN, 1e999, huge integers, deep
    nesting), except lone surrogates, which become "?": the SDK's serialiser (pydantic) refuses them
    and its stdio writer would end the server (a Python server can never send one)."""
    return json.loads(json.dumps(json.loads(text), ensure_ascii=False).encode("utf-8", "replace"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("transport", choices=["stdio", "http"])
    parser.add_argument("--port", type=int, default=8765)
    # Lets a test see a server that is slower to start than the client is willing to wait.
    parser.add_argument("--start-delay", type=float, default=0.0, metavar="SECONDS")
    options = parser.parse_args()
    if options.start_delay:
        time.sleep(options.start_delay)
    if options.transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=options.port)


if __name__ == "__main__":
    main()
