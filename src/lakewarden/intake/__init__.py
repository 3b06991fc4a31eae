"""Intakes: thin adapters (CLI, REST, MCP) over one core :class:`~lakewarden.core.warden.Warden`."""
