"""The folder rules: edge/ never talks to NATS directly, core/ never to HTTP, schemas/ is pure."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def modules(folder: str) -> list[Path]:
    found = sorted((ROOT / folder).rglob("*.py"))
    assert found, f"no modules under {folder}/"
    return found


def imported(path: Path) -> list[tuple[int, str]]:
    return imports_in(path.read_text(encoding="utf-8"), path.relative_to(ROOT).parts[0])


def imports_in(source: str, package: str) -> list[tuple[int, str]]:
    """(line, absolute top-level package) of every import in the source, at any depth.

    Relative imports are reported as `package`, the one the module sits in.
    """
    tree = ast.parse(source)
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                out.append((node.lineno, package))
            else:
                assert node.module is not None
                out.append((node.lineno, node.module.split(".")[0]))
        elif (
            isinstance(node, ast.Call)
            and _callee(node.func) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            out.append((node.lineno, node.args[0].value.split(".")[0]))
    return out


def _callee(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def offences(folder: str, allowed: set[str] | None = None, forbidden: set[str] | None = None) -> list[str]:
    found = []
    for path in modules(folder):
        for line, name in imported(path):
            if (forbidden is not None and name in forbidden) or (allowed is not None and name not in allowed):
                found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return found


def test_edge_does_not_import_nats() -> None:
    assert offences("edge", forbidden={"nats"}) == []


def test_core_does_not_import_aiohttp() -> None:
    assert offences("core", forbidden={"aiohttp"}) == []


def test_schemas_import_only_msgspec_stdlib_and_schemas() -> None:
    allowed = set(sys.stdlib_module_names) | {"msgspec", "schemas"}
    assert offences("schemas", allowed=allowed) == []


def test_core_and_schemas_do_not_import_edge() -> None:
    assert offences("core", forbidden={"edge"}) == []
    assert offences("schemas", forbidden={"edge", "core"}) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import nats", ["nats"]),
        ("import nats.js.api as api", ["nats"]),
        ("from nats.aio.client import Client", ["nats"]),
        ("def f():\n    import nats\n", ["nats"]),
        ("from . import x", ["edge"]),
        ("import importlib\nimportlib.import_module('nats.js')", ["importlib", "nats"]),
        ("import natsort", ["natsort"]),
    ],
)
def test_the_checker_sees_imports(source: str, expected: list[str]) -> None:
    assert [name for _, name in imports_in(source, "edge")] == expected
