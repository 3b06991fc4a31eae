"""``lakewarden serve`` with the MCP transport built with other options, for the MCP benchmark's
diagnostics only:

    python -m benchmarks.mcp_variant_server json|stateless SERVE-ARGS...

``json``: responses as one JSON body instead of an SSE stream; ``stateless``: that, and no MCP
session (no ``Mcp-Session-Id``, nothing kept between requests). Everything else is the shipped
server: the options are passed to the MCP SDK's ``streamable_http_app`` from the outside.
"""

from __future__ import annotations

import sys
from typing import Any

from mcp.server import MCPServer

VARIANTS = {
    "json": {"json_response": True},
    "stateless": {"json_response": True, "stateless_http": True},
}


def main(argv: list[str]) -> int:
    options = VARIANTS[argv[0]]
    shipped = MCPServer.streamable_http_app

    def variant(self: MCPServer, **kwargs: Any) -> Any:
        return shipped(self, **{**kwargs, **options})

    MCPServer.streamable_http_app = variant  # type: ignore[method-assign]
    from lakewarden.intake.cli import main as cli

    sys.argv = ["lakewarden", "serve", *argv[1:]]
    cli()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
