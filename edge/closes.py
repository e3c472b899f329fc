"""Closes by code, in total and over the last minutes: what the operator page shows."""

from __future__ import annotations

import time
from collections import Counter, deque

from schemas import CloseCode

RECENT_SECONDS = 300.0
RECENT_KEPT = 10_000
"""At most this many recent closes are remembered; a storm past it shows as the floor."""


class RecentCloses:
    __slots__ = ("_recent", "total")

    def __init__(self) -> None:
        self.total: Counter[int] = Counter()
        self._recent: deque[tuple[float, int]] = deque(maxlen=RECENT_KEPT)

    def record(self, code: int | None, now: float | None = None) -> None:
        code = 1006 if code is None else int(code)
        self.total[code] += 1
        self._recent.append((time.monotonic() if now is None else now, code))

    def summary(self, now: float | None = None) -> list[dict[str, object]]:
        """Per code: its name, closes in the last RECENT_SECONDS, closes since start; most recent first."""
        now = time.monotonic() if now is None else now
        while self._recent and now - self._recent[0][0] > RECENT_SECONDS:
            self._recent.popleft()
        recent = Counter(code for _t, code in self._recent)
        counts = sorted(((recent.get(code, 0), total, code) for code, total in self.total.items()), reverse=True)
        return [
            {"code": code, "reason": _name(code), "recent": in_window, "total": total}
            for in_window, total, code in counts
        ]


def _name(code: int) -> str:
    try:
        return CloseCode(code).name.lower().replace("_", " ")
    except ValueError:
        return {1000: "normal", 1005: "no status", 1006: "abnormal (no close frame)"}.get(code, "other")
