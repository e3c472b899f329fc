"""The hostile suite's fixtures, and its per-class summary in `.last-run.json`.

Each test is marked `@pytest.mark.hostile("<class>")` and counts its cases
with the `cases` fixture; the report hook sets each class's result from its
tests' outcomes. At the end of the session the summary (one entry per class:
`class`, `cases`, `result`, and details) is written to
`tests/hostile/.last-run.json` and printed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.hostile.support import Hostile

SUMMARY_PATH = Path(__file__).parent / ".last-run.json"
_SUMMARY: dict[str, dict[str, Any]] = {}


def _entry(name: str) -> dict[str, Any]:
    if name not in _SUMMARY:
        _SUMMARY[name] = {"class": name, "cases": 0, "result": "not run"}
    return _SUMMARY[name]


class Cases:
    """Counts the cases of one class and keeps notes on what was seen."""

    def __init__(self, entry: dict[str, Any]) -> None:
        self.entry = entry

    def add(self, n: int = 1) -> None:
        self.entry["cases"] += n

    def note(self, key: str, value: Any) -> None:
        self.entry.setdefault("details", {})[key] = value


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hostile(name): the class of hostile input a test belongs to")


@pytest.fixture
def cases(request: pytest.FixtureRequest) -> Cases:
    marker = request.node.get_closest_marker("hostile")
    assert marker is not None, "mark the test with @pytest.mark.hostile(<class>)"
    return Cases(_entry(marker.args[0]))


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def hostile(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hostile]:
    world = Hostile(tmp_path_factory.mktemp("hostile"))
    try:
        await world.start()
        yield world
    finally:
        await world.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    marker = item.get_closest_marker("hostile")
    if marker is None:
        return
    entry = _entry(marker.args[0])
    if report.failed:
        entry["result"] = "failed"
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash is not None else str(report.longrepr)
        entry.setdefault("failures", []).append(f"{item.name} ({report.when}): {message[:3000]}")
    elif report.when == "call" and report.passed and entry["result"] != "failed":
        entry["result"] = "passed"


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _SUMMARY:
        SUMMARY_PATH.write_text(json.dumps(list(_SUMMARY.values()), indent=2, ensure_ascii=False) + "\n")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _SUMMARY:
        return
    terminalreporter.write_sep("=", "hostile input classes")
    for entry in _SUMMARY.values():
        terminalreporter.write_line(f"{entry['class']}: {entry['cases']} cases, {entry['result']}")
    terminalreporter.write_line(f"(details in {SUMMARY_PATH})")
    terminalreporter.write_line(json.dumps(list(_SUMMARY.values()), indent=2, ensure_ascii=False))
