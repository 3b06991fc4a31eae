"""Sessions lent to requests: a server answering many small requests keeps a few per agent.

Opening a session opens a DuckDB cursor (about 2 ms here); reusing one costs nothing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from lakewarden.core.session import Session
from lakewarden.errors import LakewardenError

IDLE_PER_AGENT = 8


class SessionPool:
    def __init__(self, open_session: Callable[[str], Session]) -> None:
        self._open = open_session
        self._idle: dict[str, list[Session]] = {}
        # Held only to take or give back a session: never while a statement runs.
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def session(self, agent: str) -> Iterator[Session]:
        with self._lock:
            idle = self._idle.get(agent)
            session = idle.pop() if idle else None
        if session is None:
            session = self._open(agent)
        reusable = False
        try:
            yield session
            reusable = True
        except LakewardenError:
            reusable = True  # a refused statement leaves the session as it was
            raise
        finally:
            with self._lock:
                idle = self._idle.setdefault(agent, [])
                keep = reusable and not session.closed and len(idle) < IDLE_PER_AGENT
                if keep:
                    idle.append(session)
            if not keep:
                session.close()

    def close(self) -> None:
        with self._lock:
            sessions = [s for idle in self._idle.values() for s in idle]
            self._idle.clear()
        for session in sessions:
            session.close()
