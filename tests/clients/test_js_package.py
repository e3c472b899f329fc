"""The npm package of the JS client holds what a user needs and nothing else, its license included."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "clients/js"


def test_npm_pack_ships_the_module_its_stream_transport_types_readme_and_license() -> None:
    out = subprocess.run(
        ["npm", "pack", "--dry-run", "--json", "--loglevel=error"],
        cwd=PACKAGE,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    (packed,) = json.loads(out)
    files = sorted(entry["path"] for entry in packed["files"])
    assert files == ["LICENSE", "README.md", "jetsock-stream.js", "jetsock.d.ts", "jetsock.js", "package.json"]


def test_the_package_license_is_the_repository_license() -> None:
    declared = json.loads((PACKAGE / "package.json").read_text())["license"]
    assert declared == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert (PACKAGE / "LICENSE").read_text() == text, (
        "clients/js/LICENSE is a copy of LICENSE (npm packs only its own folder)"
    )
