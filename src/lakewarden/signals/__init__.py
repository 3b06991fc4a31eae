"""Data-quality signals computed with Polars: freshness, volume, schema, nulls, anomalies."""
