"""The only stage that talks to DuckDB: the engine connection, the lake, snapshots and state."""
