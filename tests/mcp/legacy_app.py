"""A minimal pre-2026 MCP server over stdio (protocol 2025-06-18, written against the spec
rather than the SDK): `initialize` first, `-32601 Method not found` for anything it does not
know, `server/discover` included, as servers built before that method existed answer. Most
servers deployed today are of this era; the pool must fall back to the handshake with them.

    python legacy_app.py LOG_FILE
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

TOOLS = [
    {
        "name": "add",
        "description": "Add two integers.",
        "inputSchema": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    }
]


def answer(message: dict[str, Any]) -> dict[str, Any] | None:
    method = message.get("method")
    if "id" not in message:
        return None  # a notification (notifications/initialized, cancelled)
    reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"]}
    if method == "initialize":
        reply["result"] = {
            "protocolVersion": "2025-06-18",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "legacy", "version": "1"},
        }
    elif method == "tools/list":
        reply["result"] = {"tools": TOOLS}
    elif method == "tools/call" and message["params"]["name"] == "add":
        args = message["params"].get("arguments") or {}
        total = args["a"] + args["b"]
        reply["result"] = {"content": [{"type": "text", "text": str(total)}], "isError": False}
    else:
        reply["error"] = {"code": -32601, "message": f"Method not found: {method}"}
    return reply


def main() -> None:
    log = sys.argv[1]
    for line in sys.stdin:
        message = json.loads(line)
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {message.get('method', 'response')}\n")
        reply = answer(message)
        if reply is not None:
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
