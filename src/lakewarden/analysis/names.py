"""Table names as lakewarden shows them: ``orders`` in schema main, else ``staging.orders``."""

from __future__ import annotations

DEFAULT_SCHEMA = "main"
# lakewarden's own schema in the lake (the audit trail): never a table of agents or signals.
INTERNAL_SCHEMA = "lakewarden"


def display_name(schema: str | None, table: str) -> str:
    """The name used in metrics, spans and policies: the schema is left out when it is ``main``."""
    schema = (schema or DEFAULT_SCHEMA).lower()
    table = table.lower()
    return table if schema == DEFAULT_SCHEMA else f"{schema}.{table}"


def split_name(name: str) -> tuple[str, str]:
    """``"staging.orders"`` -> ``("staging", "orders")``; ``"orders"`` -> ``("main", "orders")``."""
    parts = name.lower().split(".")
    if len(parts) == 1:
        return DEFAULT_SCHEMA, parts[0]
    return parts[-2], parts[-1]


def normalize(name: str) -> str:
    """Any spelling of a table name (``lake.main.Orders``, ``main.orders``) -> its display name."""
    return display_name(*split_name(name))


def is_internal(name: str) -> bool:
    """Whether a table (any spelling) is lakewarden's own, in the lake's internal schema."""
    return split_name(name)[0] == INTERNAL_SCHEMA
