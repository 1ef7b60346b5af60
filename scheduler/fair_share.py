"""Per-client fairness at admission: one client (an API key, else an address) may hold at most
``limit`` outstanding requests, so it cannot fill the shared queue and starve everyone else.

A pure counter; the ingress asks before forwarding a request and gives the place back when the
request is answered, whatever the outcome.
"""

from __future__ import annotations

from collections import Counter


class FairShare:
    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError("limit must be >= 1 (or None: no per-client limit)")
        self.limit = limit
        self._held: Counter[str] = Counter()

    def held(self, client: str) -> int:
        return self._held[client]

    def try_take(self, client: str) -> bool:
        """Take a place for ``client``; False when it already holds ``limit``."""
        if self.limit is not None and self._held[client] >= self.limit:
            return False
        self._held[client] += 1
        return True

    def give_back(self, client: str) -> None:
        self._held[client] -= 1
        if self._held[client] <= 0:
            del self._held[client]
