"""Several edge processes on one port: `jetsock serve --workers N`.

Each worker is a full node (its own event loop, NATS connection and
connections) bound with SO_REUSEPORT, so the kernel spreads new connections
across them; a Python process uses one core, and one process holds at most
~19,000 sockets under a 20,000 file-descriptor limit. The supervisor only
starts workers, restarts one that dies, and passes SIGTERM/SIGINT on so that
every worker drains.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from core.embedded import die_with_parent

log = logging.getLogger(__name__)

WORKER_ENV = "_JETSOCK_WORKER"
"""Set in a worker's environment to its index: not a setting, the supervisor's mark."""

RESTART_PAUSE = 1.0


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft file-descriptor limit to the hard one; both, for the log."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the file-descriptor limit from %d: %s", soft, exc)
    raised, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    log.info("file descriptors: soft limit %d (was %d), hard limit %d", raised, soft, hard)
    return raised, hard


def worker_index() -> int | None:
    value = os.environ.get(WORKER_ENV)
    return int(value) if value is not None else None


def supervise(count: int, argv: Sequence[str], env: dict[str, str]) -> int:
    """Run `count` workers of `jetsock serve argv` until a signal; 0 when all stopped cleanly."""
    stopping = False

    def start(index: int) -> subprocess.Popen[bytes]:
        child_env = {**env, WORKER_ENV: str(index)}
        # A later flag wins in argparse: each worker is a single process.
        args = [sys.executable, "-m", "edge.cli", "serve", *argv, "--workers", "1"]
        # Own session: a signal to the terminal's or the supervisor's group reaches
        # the supervisor only, which passes it on once (a second signal would cut
        # a worker's drain short); and a worker dies with the supervisor.
        return subprocess.Popen(args, env=child_env, start_new_session=True, preexec_fn=die_with_parent)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for process in workers:
            if process.poll() is None:
                process.send_signal(signum)

    workers = [start(i) for i in range(count)]
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    log.info("started %d workers: %s", count, ", ".join(str(p.pid) for p in workers))
    while True:
        for index, process in enumerate(workers):
            code = process.poll()
            if code is None or stopping:
                continue
            log.warning("worker %d (pid %d) exited with %s; restarting", index, process.pid, code)
            time.sleep(RESTART_PAUSE)
            # A signal during the pause: the replacement would never get it and would outlive us.
            if not stopping:
                workers[index] = start(index)
        if stopping and all(p.poll() is not None for p in workers):
            break
        time.sleep(0.2)
    codes = [p.returncode for p in workers]
    log.info("workers stopped: %s", codes)
    return 0 if all(c == 0 for c in codes) else 1
