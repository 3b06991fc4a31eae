"""The names lakewarden's HTTP API puts on the wire, spelled once for the server (``intake/``)
and for its client (:mod:`lakewarden.client`), which must not depend on the server's code."""

from __future__ import annotations

__all__ = ["AGENT_HEADER", "ARROW_STREAM", "TRACE_ID_HEADER", "TRUNCATED_HEADER"]

# Names the agent in open mode (no tokens in the policy, loopback only); ignored once the
# policy has tokens, where only a bearer token names an agent.
AGENT_HEADER = "X-Lakewarden-Agent"
# The media type an agent accepts to get a read as an Arrow IPC stream instead of JSON.
ARROW_STREAM = "application/vnd.apache.arrow.stream"
# On an Arrow answer, which has no JSON body to carry them: the statement's trace, and whether
# the rows were cut at the row limit.
TRACE_ID_HEADER = "X-Trace-Id"
TRUNCATED_HEADER = "X-Lakewarden-Truncated"
