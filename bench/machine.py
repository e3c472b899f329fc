"""A description of the machine and the software measured, stored with every result."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

from core.embedded import nats_server_binary


def _first_line(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def describe() -> dict[str, Any]:
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    redis = shutil.which("redis-server")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "fd_limit": int(_first_line(["sh", "-c", "ulimit -Hn"]) or 0),
        "versions": {
            "aiohttp": version("aiohttp"),
            "nats-py": version("nats-py"),
            "nats-server": _first_line([nats_server_binary(), "--version"]),
            "python-socketio": version("python-socketio"),
            "redis-server": _first_line([redis, "--version"]) if redis else "absent",
        },
    }
