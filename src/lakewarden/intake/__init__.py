"""Intakes: thin adapters (CLI, REST, MCP) over one core :class:`~lakewarden.warden.Warden`."""
