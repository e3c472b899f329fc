"""`python -m bench [--quick] [--only idle,fanout] [--systems jetsock,python-socketio]`.

Runs every scenario against every system, writes bench/results/<scenario>-<system>.json
with the report's fixed keys, then regenerates bench/REPORT.md and its plots.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from bench.conductor import progress
from bench.machine import describe
from bench.report import RESULTS, write_report
from bench.scenarios import FULL, JETSOCK_ONLY, QUICK, SCENARIOS, Scale
from bench.systems import DEFAULT_SYSTEMS, SYSTEMS

FIXED_KEYS = (
    "scenario",
    "system",
    "connections",
    "rss_kb_per_conn",
    "cpu_us_per_delivery",
    "deliveries_per_s",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "catchup_s",
    "lost",
    "machine",
)
"""The keys of results/<scenario>-<system>.json, read by checks outside the project; the rest of
what a scenario measures goes to results/details/<scenario>-<system>.json."""


async def run(scenarios: list[str], systems: list[str], quick: bool, results: Path, scale: Scale | None = None) -> None:
    """Run and record; `scale` replaces the quick or full one (the harness's smoke tests, tinier)."""
    scale = scale or (QUICK if quick else FULL)
    machine = {**describe(), "scale": "quick" if quick else "full"}
    (results / "details").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for scenario in scenarios:
        for system in systems:
            if scenario in JETSOCK_ONLY and SYSTEMS[system].protocol != "jetsock":
                progress(f"{scenario} {system}: skipped, {system} has no {scenario}")
                print(file=sys.stderr)
                continue
            began = time.monotonic()
            figures = await SCENARIOS[scenario](system, scale)
            everything = {"scenario": scenario, "system": system, **figures, "machine": machine}
            fixed = {key: everything[key] for key in FIXED_KEYS if everything.get(key) is not None}
            name = f"{scenario}-{system}.json"
            (results / name).write_text(json.dumps(fixed, indent=1) + "\n")
            (results / "details" / name).write_text(json.dumps(everything, indent=1) + "\n")
            headline = {k: v for k, v in figures.items() if not isinstance(v, (list, dict))}
            progress(f"{scenario} {system} ({time.monotonic() - began:.0f} s): {headline}")
            print(file=sys.stderr)
    report = write_report(results)
    progress(f"bench done in {time.monotonic() - started:.0f} s: {report}")
    print(file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="every scenario at small scale (under 3 minutes)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument(
        "--systems", default=",".join(DEFAULT_SYSTEMS), help=f"comma-separated, of: {', '.join(SYSTEMS)}"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="where results go; REPORT.md goes beside it")
    parser.add_argument("--report-only", action="store_true", help="regenerate REPORT.md from the stored results")
    args = parser.parse_args()
    if args.report_only:
        write_report(args.results)
        return
    asyncio.run(run(args.only.split(","), args.systems.split(","), args.quick, args.results))


if __name__ == "__main__":
    main()
