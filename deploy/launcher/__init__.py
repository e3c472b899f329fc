"""`jetsock_server`: the one top-level name the server distribution installs.

The server's code lives in the packages `core`, `edge` and `schemas` (DESIGN.md, "Where
things live"). Installed as top-level packages they would shadow, or be shadowed by, any
other `core`, `edge` or `schemas` in the same environment (a Django project's `core` app,
say). So the wheel installs them one level down, as `jetsock_server/core`, ...,
and nothing in the environment can import them by accident: they are on `sys.path` only in
a process that `jetsock` starts. The code keeps its absolute imports (`from core.settings
import ...`), so the installed code is byte for byte the source and its tracebacks name the
same modules.

`main` (the `jetsock` console script) puts the folder that holds the three packages first
on `sys.path` and in `PYTHONPATH` (for the processes it starts: `--workers`, `jetsock
cluster`), then runs `edge.cli`. Importing `jetsock_server` changes nothing.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path


def code_root() -> Path:
    """The folder holding `core`, `edge` and `schemas`: `site-packages/jetsock_server` in an
    installed wheel, the repository in an editable install (whose import hook maps
    `jetsock_server.edge` onto the repository's `edge/`)."""
    spec = importlib.util.find_spec("jetsock_server.edge")
    if spec is None or spec.origin is None:
        raise RuntimeError("jetsock_server.edge is not installed: reinstall the jetsock-server distribution")
    return Path(spec.origin).resolve().parents[1]


def main() -> int:
    root = str(code_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    inherited = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = root if not inherited else os.pathsep.join([root, inherited])
    from edge.cli import main as edge_main

    return edge_main()
