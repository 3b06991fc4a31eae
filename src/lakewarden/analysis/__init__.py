"""Statement analysis: split, classify, find tables, summarize. Pure: no engine state is read."""

from lakewarden.analysis.statement import Statement, analyze

__all__ = ["Statement", "analyze"]
