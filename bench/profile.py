"""Where a server process spends its time: py-spy samples folded into a top-functions table.

py-spy attaches to a running process without changing it (`--nonblocking`
does not even pause it), so the profile is taken during the measurement it
explains. Self time is the innermost frame of each sample; total time counts
a function once per sample it appears in.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^:()]*)(?::\d+)?\)$")


def _short(frame: str) -> str:
    """`function (path/to/module.py:12)` → `function (module.py)`."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    return f"{match['function']} ({Path(match['file']).name})"


def fold(raw: str, top: int = 15) -> dict[str, Any]:
    """py-spy's raw (collapsed) output → sample count and the top functions by self and total share."""
    self_time: Counter[str] = Counter()
    total_time: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        samples += count
        self_time[frames[-1]] += count
        for frame in set(frames):
            total_time[frame] += count
    return {
        "samples": samples,
        "self": [(name, round(n / samples, 4)) for name, n in self_time.most_common(top)] if samples else [],
        "total": [(name, round(n / samples, 4)) for name, n in total_time.most_common(top)] if samples else [],
    }


def py_spy() -> str | None:
    found = Path(sys.executable).parent / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


async def record(pid: int, seconds: float, out: Path) -> dict[str, Any] | None:
    """Sample `pid` for `seconds` (100 Hz, native frames off); None when py-spy is absent or refused."""
    binary = py_spy()
    if binary is None:
        return None
    process = await asyncio.create_subprocess_exec(
        binary,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        "100",
        "--nonblocking",
        "--format",
        "raw",
        "--output",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await process.communicate()
    if process.returncode != 0 or not out.exists():
        print(f"py-spy could not profile pid {pid}: {err.decode(errors='replace')[-300:]}", file=sys.stderr)
        return None
    return fold(out.read_text())
