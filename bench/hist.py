"""Latency histograms that merge across load-generator processes.

Buckets are logarithmic at 2% resolution (bucket = round(ln(ms) * 50)), so a
histogram of millions of samples is a few hundred integers, cheap to send
over a pipe and to add up; percentiles are read at the bucket's upper edge.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

_SCALE = 50.0
_FLOOR_MS = 0.01


def bucket(ms: float) -> int:
    return round(math.log(ms if ms > _FLOOR_MS else _FLOOR_MS) * _SCALE)


def merge(histograms: Iterable[Mapping[int, int]]) -> dict[int, int]:
    total: dict[int, int] = {}
    for histogram in histograms:
        for key, count in histogram.items():
            total[int(key)] = total.get(int(key), 0) + count
    return total


def percentile(histogram: Mapping[int, int], fraction: float) -> float | None:
    """The latency (ms) below which `fraction` of the samples fall; None when empty."""
    count = sum(histogram.values())
    if not count:
        return None
    rank = fraction * count
    seen = 0
    for key in sorted(histogram):
        seen += histogram[key]
        if seen >= rank:
            return round(math.exp((key + 0.5) / _SCALE), 2)
    return round(math.exp((max(histogram) + 0.5) / _SCALE), 2)


def summary(histogram: Mapping[int, int]) -> dict[str, float]:
    """p50/p99/p999 in ms under the report's fixed keys; empty when there were no samples."""
    values = {name: percentile(histogram, q) for name, q in (("p50_ms", 0.5), ("p99_ms", 0.99), ("p999_ms", 0.999))}
    return {name: value for name, value in values.items() if value is not None}


def cdf(histogram: Mapping[int, int]) -> tuple[list[float], list[float]]:
    """The cumulative fraction of samples at each bucket's upper edge (ms), for a plot."""
    merged = merge([histogram])  # int keys, also for a histogram read back from JSON
    count = sum(merged.values())
    xs: list[float] = []
    ys: list[float] = []
    seen = 0
    for key in sorted(merged):
        seen += merged[key]
        xs.append(math.exp((key + 0.5) / _SCALE))
        ys.append(seen / count)
    return xs, ys
