"""Closes by code, in total and over the last minutes: what the operator page shows.

A client may close with any code up to 65535, so codes are kept by their
label (`close_code_label`): the protocol's codes by number, every other one
as `other`. However many codes clients choose, the table has at most one row
per CloseCode plus one.
"""

from __future__ import annotations

import time
from collections import Counter, deque

from schemas import CloseCode
from schemas.codes import close_code_label

RECENT_SECONDS = 300.0
RECENT_KEPT = 10_000
"""At most this many recent closes are remembered; a storm past it shows as the floor."""
OTHER = close_code_label(65535)
"""The label of every code the protocol does not define."""


class RecentCloses:
    __slots__ = ("_recent", "total")

    def __init__(self) -> None:
        self.total: Counter[str] = Counter()
        self._recent: deque[tuple[float, str]] = deque(maxlen=RECENT_KEPT)

    def record(self, code: int | None, now: float | None = None) -> None:
        label = close_code_label(code)
        self.total[label] += 1
        self._recent.append((time.monotonic() if now is None else now, label))

    def summary(self, now: float | None = None) -> list[dict[str, object]]:
        """Per label: its name, closes in the last RECENT_SECONDS, closes since start; most recent first."""
        now = time.monotonic() if now is None else now
        while self._recent and now - self._recent[0][0] > RECENT_SECONDS:
            self._recent.popleft()
        recent = Counter(label for _t, label in self._recent)
        counts = sorted(((recent.get(label, 0), total, label) for label, total in self.total.items()), reverse=True)
        return [
            {"code": label, "reason": _name(label), "recent": in_window, "total": total}
            for in_window, total, label in counts
        ]


def _name(label: str) -> str:
    if label == OTHER:
        return "other (a code the protocol does not define)"
    return CloseCode(int(label)).name.lower().replace("_", " ")
