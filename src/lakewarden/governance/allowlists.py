"""What agents may ask the engine to do: explicit allow-lists, and what is refused on purpose.

Authorization is deny by default: a plan operator, table function or function that is not on an
allow-list here is refused, for every agent, open mode included. The refused lists are not what
keeps anything out (absence from the allow-lists does that); they record that a name was
classified on purpose, so a test can fail when a DuckDB or DuckLake upgrade registers a function
nobody has looked at yet (tests/test_function_allowlists.py).
"""

from __future__ import annotations

from importlib import resources

# Logical operators of json_serialize_plan an agent's statement may contain. DDL operators are
# here because DDL is then judged by the agent's ``ddl`` grant and its write globs.
ALLOWED_OPERATORS = frozenset(
    {
        "LOGICAL_PROJECTION",
        "LOGICAL_FILTER",
        "LOGICAL_AGGREGATE_AND_GROUP_BY",
        "LOGICAL_WINDOW",
        "LOGICAL_UNNEST",
        "LOGICAL_LIMIT",
        "LOGICAL_ORDER_BY",
        "LOGICAL_TOP_N",
        "LOGICAL_DISTINCT",
        "LOGICAL_SAMPLE",
        "LOGICAL_PIVOT",
        "LOGICAL_COMPARISON_JOIN",
        "LOGICAL_ANY_JOIN",
        "LOGICAL_CROSS_PRODUCT",
        "LOGICAL_POSITIONAL_JOIN",
        "LOGICAL_ASOF_JOIN",
        "LOGICAL_DEPENDENT_JOIN",
        "LOGICAL_DELIM_JOIN",
        "LOGICAL_UNION",
        "LOGICAL_EXCEPT",
        "LOGICAL_INTERSECT",
        "LOGICAL_RECURSIVE_CTE",
        "LOGICAL_MATERIALIZED_CTE",
        "LOGICAL_CTE_REF",
        "LOGICAL_GET",
        "LOGICAL_DELIM_GET",
        "LOGICAL_CHUNK_GET",
        "LOGICAL_EXPRESSION_GET",
        "LOGICAL_DUMMY_SCAN",
        "LOGICAL_EMPTY_RESULT",
        "LOGICAL_INSERT",
        "LOGICAL_UPDATE",
        "LOGICAL_DELETE",
        "LOGICAL_MERGE_INTO",
        "LOGICAL_CREATE_TABLE",
        "LOGICAL_CREATE_VIEW",
        "LOGICAL_CREATE_SCHEMA",
        "LOGICAL_CREATE_MACRO",
        "LOGICAL_DROP",
        "LOGICAL_ALTER",
        "LOGICAL_EXPLAIN",
    }
)

# Table functions that only scan the lake's own tables (their target is then checked against the
# agent's read grants) or only generate values from their arguments.
SCAN_FUNCTIONS = frozenset({"ducklake_scan", "seq_scan"})
ALLOWED_TABLE_FUNCTIONS = SCAN_FUNCTIONS | frozenset(
    {"range", "generate_series", "unnest", "repeat", "repeat_row", "json_each", "json_tree"}
)

_FILES = "reads or writes files or URLs"
_ENGINE = "shows or changes the engine's configuration, state or catalog"
_LAKE = "reads or changes the lake's own metadata, history or options"
_SQL = "runs SQL text given as a value, which the plan check cannot see before it runs"
REFUSED_TABLE_FUNCTIONS: dict[str, str] = {
    **dict.fromkeys(
        [
            "read_blob",
            "read_text",
            "read_csv",
            "read_csv_auto",
            "read_json",
            "read_json_auto",
            "read_json_objects",
            "read_json_objects_auto",
            "read_ndjson",
            "read_ndjson_auto",
            "read_ndjson_objects",
            "read_parquet",
            "parquet_scan",
            "parquet_metadata",
            "parquet_schema",
            "parquet_file_metadata",
            "parquet_kv_metadata",
            "parquet_full_metadata",
            "parquet_bloom_probe",
            "read_duckdb",
            "glob",
            "sniff_csv",
            "arrow_scan",
            "arrow_scan_dumb",
            "pandas_scan",
            "python_map_function",
        ],
        _FILES,
    ),
    **dict.fromkeys(
        [
            "checkpoint",
            "force_checkpoint",
            "enable_logging",
            "disable_logging",
            "enable_profiling",
            "disable_profiling",
            "truncate_duckdb_logs",
            "duckdb_logs",
            "duckdb_logs_parsed",
            "duckdb_log_contexts",
            "duckdb_profiling_settings",
            "duckdb_settings",
            "duckdb_databases",
            "duckdb_functions",
            "duckdb_columns",
            "duckdb_constraints",
            "duckdb_dependencies",
            "duckdb_extensions",
            "duckdb_external_file_cache",
            "duckdb_indexes",
            "duckdb_keywords",
            "duckdb_memory",
            "duckdb_optimizers",
            "duckdb_prepared_statements",
            "duckdb_schemas",
            "duckdb_secret_types",
            "duckdb_secrets",
            "duckdb_sequences",
            "duckdb_table_sample",
            "duckdb_tables",
            "duckdb_temporary_files",
            "duckdb_types",
            "duckdb_variables",
            "duckdb_views",
            "duckdb_approx_database_count",
            "duckdb_connection_count",
            "duckdb_coordinate_systems",
            "which_secret",
            "pragma_collations",
            "pragma_database_size",
            "pragma_metadata_info",
            "pragma_platform",
            "pragma_show",
            "pragma_storage_info",
            "pragma_table_info",
            "pragma_user_agent",
            "pragma_version",
            "icu_calendar_names",
            "pg_timezone_names",
            "test_all_types",
            "test_vector_types",
            "summary",
        ],
        _ENGINE,
    ),
    **dict.fromkeys(
        [
            "ducklake_add_data_files",
            "ducklake_cleanup_old_files",
            "ducklake_commit",
            "ducklake_current_snapshot",
            "ducklake_delete_orphaned_files",
            "ducklake_expire_snapshots",
            "ducklake_flush_inlined_data",
            "ducklake_last_committed_snapshot",
            "ducklake_list_files",
            "ducklake_merge_adjacent_files",
            "ducklake_options",
            "ducklake_rewrite_data_files",
            "ducklake_set_commit_message",
            "ducklake_set_option",
            "ducklake_settings",
            "ducklake_snapshots",
            "ducklake_table_deletions",
            "ducklake_table_info",
            "ducklake_table_insertions",
            "ducklake_table_changes",
        ],
        _LAKE,
    ),
    **dict.fromkeys(
        ["query", "query_table", "json_execute_serialized_sql", "histogram", "histogram_values"],
        _SQL,
    ),
}

_SETTINGS = "shows the engine's settings, session or catalog"
_EFFECT = "has an effect beyond computing a value"
_PLAN = "binds SQL text given as a value"
REFUSED_FUNCTIONS: dict[str, str] = {
    **dict.fromkeys(
        [
            "current_setting",
            "getvariable",
            "current_query",
            "current_query_id",
            "current_connection_id",
            "current_transaction_id",
            "txid_current",
            "current_database",
            "current_catalog",
            "current_schema",
            "current_schemas",
            "current_role",
            "current_user",
            "session_user",
            "user",
            "in_search_path",
            "version",
            "stats",
            "get_block_size",
            "parse_duckdb_log_message",
            "has_any_column_privilege",
            "has_column_privilege",
            "has_database_privilege",
            "has_foreign_data_wrapper_privilege",
            "has_function_privilege",
            "has_language_privilege",
            "has_schema_privilege",
            "has_sequence_privilege",
            "has_server_privilege",
            "has_table_privilege",
            "has_tablespace_privilege",
            "col_description",
            "obj_description",
            "shobj_description",
            "inet_client_addr",
            "inet_client_port",
            "inet_server_addr",
            "inet_server_port",
            "pg_postmaster_start_time",
            "pg_conf_load_time",
            "pg_get_viewdef",
            "pg_get_constraintdef",
            "pg_get_expr",
            "pg_has_role",
            "pg_is_other_temp_schema",
            "pg_my_temp_schema",
            "pg_collation_is_visible",
            "pg_conversion_is_visible",
            "pg_function_is_visible",
            "pg_opclass_is_visible",
            "pg_operator_is_visible",
            "pg_opfamily_is_visible",
            "pg_table_is_visible",
            "pg_ts_config_is_visible",
            "pg_ts_dict_is_visible",
            "pg_ts_parser_is_visible",
            "pg_ts_template_is_visible",
            "pg_type_is_visible",
            "map_to_pg_oid",
            "vector_type",
        ],
        _SETTINGS,
    ),
    **dict.fromkeys(
        ["write_log", "sleep_ms", "pg_sleep", "nextval", "currval", "setseed"], _EFFECT
    ),
    **dict.fromkeys(["json_serialize_plan", "json_serialize_sql", "json_deserialize_sql"], _PLAN),
}
# DuckDB's storage-internal functions (compression of integers and strings): never written by
# hand, refused as a family.
REFUSED_FUNCTION_PREFIX = "__internal_"


def _load_allowed() -> frozenset[str]:
    text = resources.files("lakewarden.governance").joinpath("functions_allowed.txt").read_text()
    names = {line.strip().lower() for line in text.splitlines()}
    return frozenset(n for n in names if n and not n.startswith("#"))


# Parse-tree spellings that are not registered scalar functions: grouping sets, TRY, COLUMNS,
# and unnest() in a select list (planned as an UNNEST operator).
PARSE_ONLY = frozenset({"grouping", "grouping_id", "try", "columns", "unpack", "unnest"})
ALLOWED_FUNCTIONS = (_load_allowed() | PARSE_ONLY) - REFUSED_FUNCTIONS.keys()
