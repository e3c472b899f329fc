"""bench/REPORT.md and its plots, regenerated from bench/results/<scenario>-<system>.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

from bench import hist
from bench.history_scenario import TARGET_P99_MS, TARGET_STORM_S
from bench.scenarios import rate_p99_stays_over

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use(): the backend is chosen before pyplot loads

HERE = Path(__file__).parent
RESULTS = HERE / "results"
SCENARIO_ORDER = ["idle", "fanout", "chat", "storm", "churn", "history"]
SYSTEM_ORDER = ["jetsock", "python-socketio"]
EVEN_BAND = 1.05
"""Ratios within 5% either way are reported as even: closer than a shared machine can tell apart."""
COLORS = {"jetsock": "#1f77b4", "python-socketio": "#d62728"}


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    lower_is_better: bool
    compared: bool = True
    """False for the load a scenario applies (its members), which both systems get alike."""


FIGURES = {
    "idle": [
        Figure("connections", "connections held and still receiving (two processes)", False),
        Figure("rss_kb_per_conn", "RSS per connection, KB", True),
        Figure("cpu_ms_per_conn_per_min", "CPU per idle connection per minute, ms", True),
    ],
    "fanout": [
        Figure("connections", "members", False, compared=False),
        Figure("deliveries_per_s", "deliveries/s at saturation", False),
        Figure("cpu_us_per_delivery", "server CPU per delivery at saturation, µs", True),
        Figure("p50_ms", "p50 at saturation, ms", True),
        Figure("p99_ms", "p99 at saturation, ms", True),
        Figure("rate_p99_over_100ms", "publish rate from which p99 stays over 100 ms, msg/s", False),
        Figure("floor_us_per_send", "floor: the kernel's CPU per send() on loopback, µs", True, compared=False),
    ],
    "chat": [
        Figure("connections", "connections", False, compared=False),
        Figure("deliveries_per_s", "deliveries/s", False),
        Figure("cpu_us_per_delivery", "server CPU per delivery, µs", True),
        Figure("p50_ms", "p50, ms", True),
        Figure("p99_ms", "p99, ms", True),
        Figure("p999_ms", "p99.9, ms", True),
    ],
    "storm": [
        Figure("connections", "clients", False, compared=False),
        Figure("resumed_s", "all reconnected after the kill, s", True),
        Figure("catchup_s", "all caught up after the kill, s", True),
        Figure("lost", "messages lost", True),
        Figure("duplicates", "duplicates", True),
    ],
    "churn": [
        Figure("churn_per_s", "connect+auth+join+close cycles/s", False),
        Figure("cpu_ms_per_cycle", "server CPU per cycle, ms", True),
        Figure("p50_ms", "connect to joined p50, ms", True),
        Figure("p99_ms", "connect to joined p99, ms", True),
    ],
}


def load(directory: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """results[scenario][system] = the stored figures, the fixed keys and the details together."""
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        if "scenario" in data and "system" in data:
            details = directory / "details" / path.name
            if details.exists():
                data = {**json.loads(details.read_text()), **data}
            if data["scenario"] == "fanout" and "steps" in data:
                data["rate_p99_over_100ms"] = rate_p99_stays_over(data["steps"], 100.0)
            results.setdefault(data["scenario"], {})[data["system"]] = data
    return results


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _ratio(figure: Figure, ours: Any, theirs: Any) -> str:
    if not isinstance(ours, (int, float)) or not isinstance(theirs, (int, float)):
        return ""
    if not figure.compared:
        return ""
    if ours == theirs:
        return "even"
    if figure.lower_is_better:
        if ours == 0:
            return "jetsock: none" if theirs else "even"
        ratio = theirs / ours
    else:
        if theirs == 0:
            return "peer: none"
        ratio = ours / theirs
    if 1 / EVEN_BAND < ratio < EVEN_BAND:
        return "even"
    word = "ahead" if ratio > 1 else "behind"
    shown = ratio if ratio > 1 else 1 / ratio if ratio else float("inf")
    return f"jetsock {shown:.1f}x {word}"


def table(scenario: str, systems: dict[str, dict[str, Any]]) -> list[str]:
    names = [s for s in SYSTEM_ORDER if s in systems]
    lines = [
        "| figure | " + " | ".join(names) + " | ratio |",
        "| --- | " + " | ".join("---:" for _ in names) + " | --- |",
    ]
    for figure in FIGURES[scenario]:
        values = [systems[n].get(figure.key) for n in names]
        if all(v is None for v in values):
            continue
        ratio = _ratio(figure, values[0], values[1]) if len(values) > 1 and names[0] == "jetsock" else ""
        lines.append(f"| {figure.label} | " + " | ".join(_fmt(v) for v in values) + f" | {ratio} |")
    return lines


def _plot(
    directory: Path,
    name: str,
    title: str,
    xlabel: str,
    ylabel: str,
    series: dict[str, tuple[list[float], list[float]]],
    log: bool = False,
) -> str | None:
    if not any(xs for xs, _ys in series.values()):
        return None
    directory.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    for label, (xs, ys) in series.items():
        system = label.split(" ")[0]
        style = "--" if label.endswith("p50") else "-"
        ax.plot(xs, ys, style, marker="o", markersize=3, label=label, color=COLORS.get(system))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(directory / f"{name}.png")
    plt.close(fig)
    return f"plots/{name}.png"


def plots(results: dict[str, dict[str, dict[str, Any]]], directory: Path) -> list[str]:
    results = {scenario: {s: r for s, r in runs.items() if s in SYSTEM_ORDER} for scenario, runs in results.items()}
    made = []
    idle = results.get("idle", {})
    made.append(
        _plot(
            directory,
            "rss-vs-connections",
            "idle: RSS per connection (2 rooms each)",
            "connections",
            "KB per connection",
            {
                s: (
                    [p["connections"] for p in r.get("points", [])],
                    [p["rss_kb_per_conn"] for p in r.get("points", [])],
                )
                for s, r in idle.items()
            },
        )
    )
    fan = results.get("fanout", {})
    made.append(
        _plot(
            directory,
            "cpu-per-delivery-vs-rate",
            "fanout: server CPU per delivery",
            "deliveries/s",
            "µs per delivery",
            {
                s: ([p["deliveries_per_s"] for p in r["steps"]], [p["cpu_us_per_delivery"] for p in r["steps"]])
                for s, r in fan.items()
            },
        )
    )
    latency: dict[str, tuple[list[float], list[float]]] = {}
    for s, r in fan.items():
        steps = [p for p in r["steps"] if "p99_ms" in p]
        latency[f"{s} p50"] = ([p["deliveries_per_s"] for p in steps], [p["p50_ms"] for p in steps])
        latency[f"{s} p99"] = ([p["deliveries_per_s"] for p in steps], [p["p99_ms"] for p in steps])
    made.append(_plot(directory, "latency-vs-load", "fanout: latency vs load", "deliveries/s", "ms", latency, log=True))
    storm = results.get("storm", {})
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for s, r in storm.items():
        times = sorted(r.get("caught_up_curve", []))
        curves[s] = (times, [float(i) for i in range(1, len(times) + 1)])
    made.append(
        _plot(
            directory,
            "storm-caught-up",
            "storm: clients caught up after a worker is killed",
            "seconds after the kill",
            "clients caught up",
            curves,
        )
    )
    made += history_plots(results.get("history", {}).get("jetsock"), directory)
    return [m for m in made if m]


def history_plots(result: dict[str, Any] | None, directory: Path) -> list[str]:
    """The page latency CDF, by kind and in all, and the join storm's clients holding their messages."""
    if not result:
        return []
    made = []
    pages = result.get("pages", {})
    kinds = dict(pages.get("page_histograms_by_kind", {}))
    if pages.get("page_histogram"):
        directory.mkdir(exist_ok=True)
        fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
        series = [("all pages", pages["page_histogram"], "-", 2.0)]
        series += [(kind, histogram, ":", 1.0) for kind, histogram in sorted(kinds.items())]
        for label, histogram, style, width in series:
            xs, ys = hist.cdf(histogram)
            ax.plot(xs, ys, style, linewidth=width, label=label, drawstyle="steps-post")
        ax.axvline(TARGET_P99_MS, color="grey", linewidth=0.8)
        ax.axhline(0.99, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_title(f"history: page latency at {pages.get('pages_per_s', 0):,.0f} pages/s (target: p99 ≤ 20 ms)")
        ax.set_xlabel("request to reply, ms (client side)")
        ax.set_ylabel("fraction of pages")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(directory / "history-page-latency.png")
        plt.close(fig)
        made.append("plots/history-page-latency.png")
    curve = sorted(result.get("storm", {}).get("curve", []))
    if curve:
        joiners = result["storm"]["joiners"]
        made.append(
            _plot(
                directory,
                "history-join-storm",
                f"history: {joiners:,} joins with last: 50 at once, clients holding their 50",
                "seconds after the joins",
                "clients",
                {"jetsock": (curve, [float(i) for i in range(1, len(curve) + 1)])},
            )
            or ""
        )
    return [m for m in made if m]


def _get(results: dict[str, dict[str, dict[str, Any]]], scenario: str, key: str) -> Any:
    return results.get(scenario, {}).get("jetsock", {}).get(key)


def marginal_rss(points: list[dict[str, Any]]) -> float | None:
    """KB per added connection between the smallest and the largest idle runs: the rooms' fixed cost cancels."""
    if len(points) < 2:
        return None
    first, last = points[0], points[-1]
    added = last.get("handshakes", last["connections"]) - first.get("handshakes", first["connections"])
    return round((last["rss_mb"] - first["rss_mb"]) * 1024 / added, 2) if added else None


def idle_sizes(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Every idle run, both systems: attempted, handshakes, held (still receiving), RSS and heartbeat CPU."""
    idle = results.get("idle", {})
    lines = [
        "| system | attempted | handshakes | held (still receiving) | RSS, MB | KB per connection | CPU ms/conn/min |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for system in SYSTEM_ORDER:
        for p in idle.get(system, {}).get("points", []):
            cells = [p["attempted"], p.get("handshakes", p["connections"]), p["connections"], p["rss_mb"]]
            cells += [p["rss_kb_per_conn"], p["cpu_ms_per_conn_per_min"]]
            lines.append(f"| {system} | " + " | ".join(_fmt(c) for c in cells) + " |")
    return [*lines, ""] if len(lines) > 2 else []


def targets(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Issue 6's targets for jetsock on this box (and issue 14's, once measured), each with what this run measured."""
    idle_points = results.get("idle", {}).get("jetsock", {}).get("points", [])
    rss = idle_points[-1]["rss_kb_per_conn"] if idle_points else None
    slope = marginal_rss(idle_points)
    held = max((p["connections"] for p in idle_points), default=None)
    rows = [
        ("RSS per idle authenticated connection in 2 rooms, largest run", "≤ 16 KB", rss, (rss or 99) <= 16),
        ("the same, marginal (slope from the smallest to the largest run)", "≤ 16 KB", slope, (slope or 99) <= 16),
        (
            "edge CPU per delivery at fan-out saturation",
            "≤ 3 µs",
            _get(results, "fanout", "cpu_us_per_delivery"),
            (_get(results, "fanout", "cpu_us_per_delivery") or 99) <= 3,
        ),
        ("chat p99", "≤ 25 ms", _get(results, "chat", "p99_ms"), (_get(results, "chat", "p99_ms") or 1e9) <= 25),
        (
            "storm: all resumed and caught up after the kill",
            "≤ 15 s",
            _get(results, "storm", "catchup_s"),
            (_get(results, "storm", "catchup_s") or 1e9) <= 15,
        ),
        ("storm: messages lost", "0", _get(results, "storm", "lost"), _get(results, "storm", "lost") == 0),
        ("concurrent connections, two workers", "≥ 38,000", held, (held or 0) >= 38_000),
    ]
    if "jetsock" in results.get("history", {}):
        p99, storm_s = _get(results, "history", "p99_ms"), _get(results, "history", "storm_s")
        rows += [
            (
                "history page of 50, p99 at 200 pages/s (issue 14)",
                f"≤ {TARGET_P99_MS:g} ms",
                p99,
                (p99 or 1e9) <= TARGET_P99_MS,
            ),
            (
                "join storm with last: 50, all hold theirs (issue 14)",
                f"≤ {TARGET_STORM_S:g} s",
                storm_s,
                (storm_s or 1e9) <= TARGET_STORM_S,
            ),
        ]
    lines = ["## Targets (jetsock)", "", "| target | goal | measured | met |", "| --- | --- | ---: | --- |"]
    for name, goal, value, met in rows:
        verdict = "not measured" if value is None else "yes" if met else "**no**"
        lines.append(f"| {name} | {goal} | {_fmt(value)} | {verdict} |")
    return [*lines, ""]


TELEMETRY_VARIANTS = (
    ("jetsock-telemetry-off", "off: metrics off, no traces"),
    ("jetsock", "default: metrics for /metrics"),
    ("jetsock-otlp", "all: metrics and 1% delivery spans pushed over OTLP"),
)


def telemetry_overhead(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Fan-out CPU per delivery with telemetry off, default and all on, rate by rate."""
    fan = results.get("fanout", {})
    runs = [(name, label, fan[name]) for name, label in TELEMETRY_VARIANTS if name in fan]
    if len(runs) < 2 or runs[0][0] != "jetsock-telemetry-off":
        return []
    if len({run["machine"].get("scale") for _n, _l, run in runs}) > 1:
        return []  # a quick run beside a full one: not comparable
    by_rate = [{step["rate"]: step["cpu_us_per_delivery"] for step in run["steps"]} for _n, _l, run in runs]
    rates = sorted(set.intersection(*(set(steps) for steps in by_rate)))
    lines = [
        "## Telemetry's cost on fan-out",
        "",
        "Server CPU per delivery (µs) at each publish rate, in one run of each configuration; the overhead is",
        "against telemetry off, summed over the rates from 20 msg/s up (where the edge is busy).",
        "",
        "| configuration | " + " | ".join(f"{r} msg/s" for r in rates) + " | overhead |",
        "| --- | " + " | ".join("---:" for _ in rates) + " | ---: |",
    ]
    busy = [r for r in rates if r >= 20] or rates
    base = sum(by_rate[0][r] for r in busy)
    for (_name, label, _run), steps in zip(runs, by_rate, strict=True):
        overhead = sum(steps[r] for r in busy) / base - 1 if base else 0.0
        cells = " | ".join(_fmt(steps[r]) for r in rates)
        lines.append(f"| {label} | {cells} | {'—' if steps is by_rate[0] else f'{overhead:+.1%}'} |")
    return [*lines, ""]


def profiles(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """py-spy's view of one serving process at the fan-out saturation rate, per system."""
    lines: list[str] = []
    for system, result in results.get("fanout", {}).items():
        if system not in SYSTEM_ORDER:
            continue
        profile = result.get("profile")
        if not profile or not profile.get("samples"):
            continue
        if not lines:
            lines += ["## Where the time goes: fan-out at saturation (py-spy, one process)", ""]
        lines += [
            f"**{system}** ({profile['samples']} samples), self time:",
            "",
            "| function | share |",
            "| --- | ---: |",
        ]
        lines += [f"| `{name}` | {share:.1%} |" for name, share in profile["self"][:12]]
        lines.append("")
    if (HERE / "OPTIMISATIONS.md").exists():
        lines += [
            "What changed in the edge to get here, with before/after figures: [OPTIMISATIONS.md](OPTIMISATIONS.md).",
            "",
        ]
    return lines


def _met(met: bool, value: Any) -> str:
    return "not measured" if value is None else "yes" if met else "**no**"


def history_section(result: dict[str, Any]) -> list[str]:
    """Issue 14's scenario: its figures beside its targets, the cost by kind of page, and a profile."""
    load = result.get("load", {})
    pages = result.get("pages", {})
    storm = result.get("storm", {})
    counted = pages.get("counted", {})
    lines = [
        "python-socketio keeps no messages, so it has no history to page or to replay on a join: jetsock only.",
        "",
    ]
    if load:
        lines += [
            f"The stream: {load['messages']:,} messages of {load['message_bytes']} bytes over {load['rooms']:,} rooms"
            f" ({load['small_rooms']:,} of {load['small_room_messages']}, {load['big_rooms']:,} of"
            f" {load['big_room_messages']}; spread through the stream), loaded in {load['seconds']:.1f} s:"
            f" **{load['msg_per_s']:,} msg/s** (nats-py async publishes, {load['window']:,} per window, two windows"
            " in flight).",
            "",
        ]
    p99, storm_s = result.get("p99_ms"), result.get("storm_s")
    replay = storm.get("join_to_held", {})
    rows: list[tuple[str, Any, str, str]] = [
        ("pages of 50 answered per second", pages.get("pages_per_s"), "200 asked (paced)", ""),
        ("clients asking", pages.get("readers"), "", ""),
        ("page latency p50, ms", result.get("p50_ms"), "", ""),
        ("page latency p99, ms", p99, f"≤ {TARGET_P99_MS:g}", _met((p99 or 1e9) <= TARGET_P99_MS, p99)),
        ("page latency p99.9, ms", result.get("p999_ms"), "", ""),
        ("messages per page", pages.get("messages_per_page"), "", ""),
        ("edge CPU per page, µs", pages.get("edge_cpu_us_per_page"), "", ""),
        ("nats-server CPU per page, µs", pages.get("nats_cpu_us_per_page"), "", ""),
        ("JetStream requests per page (nats-server /varz `in_msgs`)", pages.get("js_requests_per_page"), "", ""),
        ("the same mix counted in-process (core.history)", counted.get("requests_per_page"), "", ""),
        (
            "pages asked but unanswered (open loop, late ones waited for)",
            pages.get("pages_unanswered") or None,
            "0",
            "",
        ),
        (
            f"join storm: {storm.get('joiners', 0):,} clients join with last: 50, all hold their 50, s",
            storm_s if storm_s is not None or "timeout_s" not in storm else _timed_out(storm),
            f"≤ {TARGET_STORM_S:g}",
            _met((storm_s or 1e9) <= TARGET_STORM_S, storm_s),
        ),
        ("join storm: join to holding the 50, p50 / p99, ms", _pair(replay), "", ""),
        ("join storm: edge CPU, s (cores busy)", _busy(storm, "edge"), "", ""),
        ("join storm: nats-server CPU, s (cores busy)", _busy(storm, "nats"), "", ""),
        (
            "join storm: messages short of 50, duplicates",
            _pair_of(result.get("lost"), storm.get("duplicates")),
            "0, 0",
            _met(result.get("lost") == 0 and storm.get("duplicates") == 0, result.get("lost")),
        ),
    ]
    lines += ["| figure | jetsock | target (issue 14) | met |", "| --- | ---: | --- | --- |"]
    lines += [f"| {name} | {_fmt(value)} | {goal} | {met} |" for name, value, goal, met in rows if value is not None]
    lines.append("")
    if method := pages.get("js_requests_method"):
        lines += [f"JetStream requests per page: {method}.", ""]
    latency = pages.get("page_latency_by_kind", {})
    by_kind = counted.get("by_kind", {})
    if latency:
        lines += [
            "By kind of page (`big`: rooms of the big tier, found by interpolation search; `small`: one read;"
            " `head`: no `before`; `before`: drawn over the stream). Requests counted in-process,"
            " one direct get each: the head, the counts, the search steps, the forward read.",
            "",
            "| kind | pages | p50, ms | p99, ms | requests per page, mean | max | count probes, mean |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for kind, figures in latency.items():
            cost = by_kind.get(kind, {})
            cells = [figures.get("pages"), figures.get("p50_ms"), figures.get("p99_ms")]
            cells += [cost.get("mean"), cost.get("max"), cost.get("probes_mean")]
            lines.append(f"| {kind} | " + " | ".join(_fmt(c) for c in cells) + " |")
        lines.append("")
    edge_profile = pages.get("profile")
    if edge_profile and edge_profile.get("samples"):
        lines += [
            f"Where one worker's time goes while serving pages (py-spy, {edge_profile['samples']} samples, self time):",
            "",
            "| function | share |",
            "| --- | ---: |",
        ]
        lines += [f"| `{name}` | {share:.1%} |" for name, share in edge_profile["self"][:10]]
        lines.append("")
    return lines


def _timed_out(storm: dict[str, Any]) -> str:
    return f"> {_fmt(storm['timeout_s'])} ({_fmt(storm.get('held'))} of {_fmt(storm.get('joiners'))})"


def _pair(summary: dict[str, Any]) -> str | None:
    if "p50_ms" not in summary:
        return None
    return f"{_fmt(summary['p50_ms'])} / {_fmt(summary.get('p99_ms'))}"


def _pair_of(first: Any, second: Any) -> str | None:
    return None if first is None else f"{_fmt(first)}, {_fmt(second)}"


def _busy(storm: dict[str, Any], who: str) -> str | None:
    if f"{who}_cpu_s" not in storm:
        return None
    return f"{_fmt(storm[f'{who}_cpu_s'])} ({_fmt(storm[f'{who}_cpu_busy'])})"


def write_report(directory: Path = RESULTS) -> Path:
    """REPORT.md and plots/ beside `directory` (bench/ for the committed results)."""
    results = load(directory)
    base = directory.parent
    lines = ["# jetsock benchmarks", ""]
    lines += [
        "Generated by `make bench` (`python -m bench`) from `bench/results/*.json`; do not edit by hand.",
        "Each figure is a ratio taken in one run on one machine: server CPU (user + system, from /proc) over the",
        "deliveries the clients counted, RSS over connections, latency from the publisher's clock in the payload to",
        "receipt. Both systems run as two processes on one port, driven by the same lean client (`bench/wire.py`).",
        "",
    ]
    machine = next((r["machine"] for systems in results.values() for r in systems.values()), None)
    quick = [
        scenario
        for scenario in SCENARIO_ORDER
        if any(r["machine"].get("scale") == "quick" for r in results.get(scenario, {}).values())
    ]
    if quick and len(quick) == len([s for s in SCENARIO_ORDER if s in results]):
        lines += ["**These results come from `make bench-quick` (small scale): smoke figures, not the benchmark.**", ""]
    elif quick:
        names = ", ".join(quick)
        lines += [f"**{names}: from `make bench-quick` (small scale), smoke figures, not the benchmark.**", ""]
    if machine:
        lines += ["## Machine", "", "```json", json.dumps(machine, indent=1), "```", ""]
    for scenario in SCENARIO_ORDER:
        if scenario == "history":
            if "jetsock" in results.get(scenario, {}):
                lines += ["## history", "", *history_section(results[scenario]["jetsock"])]
        elif scenario in results:
            lines += [f"## {scenario}", "", *table(scenario, results[scenario]), ""]
            if scenario == "idle":
                lines += idle_sizes(results)
    lines += targets(results)
    lines += telemetry_overhead(results)
    lines += profiles(results)
    images = plots(results, base / "plots")
    if images:
        lines += ["## Plots", ""] + [f"![{Path(i).stem}]({i})" for i in images] + [""]
    report = base / "REPORT.md"
    report.write_text("\n".join(lines))
    return report
