"""The packages as they ship: the server's wheel and sdist build, pass `twine check`, install
into an empty environment as one top-level package (`jetsock_server`) that serves the demo and
the browser client, and `npm pack` of clients/js holds exactly the module, its lazily loaded
chunks, its types, its README and the license. Versions come from the root pyproject.toml.

The Python client's own distribution is checked in tests/clients/test_python_dist.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import pytest

from core.embedded import free_port

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
PROJECT_URL = "https://github.com/jetsock/jetsock"


def run(*args: str | Path, cwd: Path = REPO, timeout: float = 300) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def server_dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's sdist, and a wheel built from that sdist (so the sdist is known complete)."""
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", out, REPO)
    return out


def test_the_server_wheel_installs_one_top_level_package(server_dist: Path) -> None:
    (wheel,) = server_dist.glob("jetsock_server-*.whl")
    assert wheel.name.startswith(f"jetsock_server-{VERSION}-")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"jetsock_server", f"jetsock_server-{VERSION}.dist-info"}, top
    for shipped in (
        "jetsock_server/__init__.py",
        "jetsock_server/core/settings.py",
        "jetsock_server/edge/cli.py",
        "jetsock_server/edge/static/index.html",
        "jetsock_server/schemas/PROTOCOL.md",
        "jetsock_server/clients/js/jetsock.js",
        "jetsock_server/clients/js/jetsock-stream.js",
        "jetsock_server/clients/js/jetsock.d.ts",
    ):
        assert shipped in names, shipped
    assert not [n for n in names if n.startswith("jetsock_server/jetsock/") or "node_modules" in n]
    entry_points = zipfile.ZipFile(wheel).read(f"jetsock_server-{VERSION}.dist-info/entry_points.txt").decode()
    assert "jetsock = jetsock_server:main" in entry_points


def test_twine_accepts_every_distribution(server_dist: Path, tmp_path: Path) -> None:
    """The server's and the client's sdists and wheels, as PyPI would check their metadata."""
    run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", tmp_path, REPO / "clients" / "python")
    built = sorted([*server_dist.iterdir(), *tmp_path.iterdir()])
    assert len(built) == 4, built
    printed = run(sys.executable, "-m", "twine", "check", "--strict", *built)
    assert printed.count("PASSED") == 4, printed


def test_the_installed_server_serves_and_shadows_nothing(server_dist: Path, tmp_path: Path) -> None:
    """In an empty venv: `jetsock serve --dev` from the wheel answers /readyz and serves the demo
    and the browser client; `core`, `edge` and `schemas` cannot be imported from that venv."""
    (wheel,) = server_dist.glob("*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "--quiet", "--disable-pip-version-check", wheel)
    for name in ("core", "edge", "schemas", "jetsock"):
        # Not in the repository: `python -c` puts its working directory first on sys.path.
        probe = subprocess.run(
            [venv / "bin" / "python", "-c", f"import {name}"], cwd=tmp_path, capture_output=True, text=True
        )
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, (name, probe.stderr)
    port = free_port()
    env = {**os.environ, "JETSOCK_PORT": str(port), "PYTHONPATH": ""}
    edge = subprocess.Popen(
        [venv / "bin" / "jetsock", "serve", "--dev"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert edge.stdout is not None
        banner = ""
        for line in edge.stdout:
            banner += line
            if "dev token" in line.lower() or len(banner) > 20_000:
                break
        assert "dev token" in banner.lower(), banner
        base = f"http://127.0.0.1:{port}"
        for path, marker in (("/readyz", b""), ("/", b"<!doctype html>"), ("/jetsock.js", b"export class")):
            with urllib.request.urlopen(base + path, timeout=10) as reply:
                assert reply.status == 200, path
                assert marker in reply.read(), path
    finally:
        edge.terminate()
        edge.wait(timeout=30)


def npm_pack() -> set[str]:
    printed = run("npm", "pack", "--dry-run", "--json", "--ignore-scripts", cwd=REPO / "clients" / "js", timeout=120)
    (pack,) = json.loads(printed)
    return {entry["path"] for entry in pack["files"]}


def test_npm_pack_holds_the_module_its_chunks_types_readme_and_license() -> None:
    """Exactly these: package.json, the module, every chunk it imports lazily, the types, README, LICENSE."""
    source = (REPO / "clients" / "js" / "jetsock.js").read_text()
    chunks = set(re.findall(r"""import\(\s*["']\./([\w.-]+\.js)["']\s*\)""", source))
    assert "jetsock-stream.js" in chunks, "the stream transport is a lazily imported chunk"
    expected = {"package.json", "jetsock.js", "jetsock.d.ts", "README.md", "LICENSE", *chunks}
    assert npm_pack() == expected
    assert (REPO / "clients" / "js" / "LICENSE").read_text() == (REPO / "LICENSE").read_text()


def test_npm_metadata_points_at_the_project_and_carries_the_one_version() -> None:
    package = json.loads((REPO / "clients" / "js" / "package.json").read_text())
    assert package["version"] == VERSION
    assert package["repository"]["url"].removeprefix("git+").removesuffix(".git") == PROJECT_URL
    assert package["homepage"].startswith(PROJECT_URL)
    assert package["bugs"]["url"].startswith(PROJECT_URL)
    client = tomllib.loads((REPO / "clients" / "python" / "pyproject.toml").read_text())["project"]
    assert client["version"] == VERSION
