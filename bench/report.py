"""bench/REPORT.md and its plots, regenerated from bench/results/<scenario>-<system>.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

from bench import hist
from bench.compression_scenario import TARGET_CPU_RATIO, TARGET_RSS_KB, TARGET_WIRE_CUT
from bench.history_scenario import TARGET_P99_MS, TARGET_STORM_S
from bench.presence_scenario import TARGET_CHURN_OVERHEAD, TARGET_WHO_P99_MS
from bench.scenarios import rate_p99_stays_over
from bench.stream_scenario import TARGET_CPU_RATIO as TARGET_STREAM_CPU_RATIO
from bench.stream_scenario import TARGET_RSS_RATIO as TARGET_STREAM_RSS_RATIO
from core.settings import Settings

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use(): the backend is chosen before pyplot loads

HERE = Path(__file__).parent
RESULTS = HERE / "results"
SCENARIO_ORDER = ["idle", "fanout", "chat", "storm", "churn", "history", "presence", "compression", "stream"]
SYSTEM_ORDER = ["jetsock", "node-socketio", "python-socketio"]
"""The ratio column compares jetsock with the next system present (Node socket.io when it ran)."""
EVEN_BAND = 1.05
"""Ratios within 5% either way are reported as even: closer than a shared machine can tell apart."""
COLORS = {"jetsock": "#1f77b4", "node-socketio": "#2ca02c", "python-socketio": "#d62728"}
DEFAULT_SETTINGS = Settings()


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
    made += presence_plots(results.get("presence", {}).get("jetsock"), directory)
    made += stream_plots(results.get("stream", {}).get("jetsock"), directory)
    return [m for m in made if m]


STREAM_COLORS = {"websocket": "#1f77b4", "stream": "#ff7f0e"}


def stream_plots(result: dict[str, Any] | None, directory: Path) -> list[str]:
    """Fan-out over WebSocket and over the HTTP stream: CPU per delivery and p99 against the publish rate."""
    if not result or not result.get("fanout"):
        return []
    directory.mkdir(exist_ok=True)
    fig, (cpu_ax, p99_ax) = plt.subplots(1, 2, figsize=(9.6, 3.8), dpi=100)
    for run in result["fanout"]:
        steps = run.get("steps", [])
        transport = run["transport"]
        rates = [s["rate"] for s in steps]
        color = STREAM_COLORS.get(transport)
        cpu_ax.plot(
            rates, [s["cpu_us_per_delivery"] for s in steps], marker="o", markersize=3, label=transport, color=color
        )
        with_p99 = [s for s in steps if "p99_ms" in s]
        p99_ax.plot(
            [s["rate"] for s in with_p99],
            [s["p99_ms"] for s in with_p99],
            marker="o",
            markersize=3,
            label=f"{transport} p99",
            color=color,
        )
        p99_ax.plot(
            [s["rate"] for s in with_p99],
            [s["p50_ms"] for s in with_p99],
            "--",
            marker="o",
            markersize=3,
            label=f"{transport} p50",
            color=color,
        )
    members = result["fanout"][0].get("members", 0)
    cpu_ax.set_title(f"stream: fan-out to {members:,}, server CPU per delivery")
    cpu_ax.set_ylabel("µs per delivery")
    p99_ax.set_title("latency, publisher to member")
    p99_ax.set_ylabel("ms")
    for ax in (cpu_ax, p99_ax):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("publish rate, msg/s")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(directory / "stream-fanout.png")
    plt.close(fig)
    return ["plots/stream-fanout.png"]


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


def presence_plots(result: dict[str, Any] | None, directory: Path) -> list[str]:
    """CDFs of `who` latency (quiet and while churning) and of the event delay (joins, churn)."""
    if not result:
        return []
    series = [
        ("who, room quiet", result.get("who", {}).get("histogram"), "-"),
        ("who, while churning", result.get("who_under_churn", {}).get("histogram"), "--"),
        ("event delay, joins", result.get("join", {}).get("events", {}).get("delay_histogram"), ":"),
        ("event delay, churn", result.get("churn", {}).get("events", {}).get("delay_histogram"), "-."),
    ]
    series = [(label, histogram, style) for label, histogram, style in series if histogram]
    if not series:
        return []
    directory.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    for label, histogram, style in series:
        xs, ys = hist.cdf(histogram)
        ax.plot(xs, ys, style, label=label, drawstyle="steps-post")
    ax.axvline(TARGET_WHO_P99_MS, color="grey", linewidth=0.8, label="who target: p99 ≤ 50 ms")
    ax.axhline(0.99, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    present = result.get("present", 0)
    interval = result.get("presence_interval", 1.0)
    ax.set_title(f"presence: a room of {present:,}, who and events ({interval:g} s interval)")
    ax.set_xlabel("ms (who: request to reply; event: join/leave sent to frame received)")
    ax.set_ylabel("fraction")
    ax.grid(alpha=0.3)
    ax.legend(loc="center", fontsize="small")
    fig.tight_layout()
    fig.savefig(directory / "presence-latency.png")
    plt.close(fig)
    return ["plots/presence-latency.png"]


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
    if "jetsock" in results.get("presence", {}):
        who_p99, overhead = _get(results, "presence", "p99_ms"), _get(results, "presence", "churn_presence_overhead")
        present = _get(results, "presence", "present")
        rows += [
            (
                f"`who` p99 in a presence room of {_fmt(present)} (issue 15)",
                f"≤ {TARGET_WHO_P99_MS:g} ms",
                who_p99,
                (who_p99 if who_p99 is not None else 1e9) <= TARGET_WHO_P99_MS,
            ),
            (
                "presence's cost on the churn scenario's CPU per cycle (issue 15)",
                f"≤ +{TARGET_CHURN_OVERHEAD:.0%}",
                None if overhead is None else f"{overhead:+.1%}",
                (overhead if overhead is not None else 1e9) <= TARGET_CHURN_OVERHEAD,
            ),
        ]
    if "jetsock" in results.get("compression", {}):
        measured = results["compression"]["jetsock"].get("targets", {})
        members = measured.get("cpu_ratio_2kb_saturation", {}).get("members")
        for key, name, goal in (
            ("wire_cut_2kb", "wire bytes per delivery of the 2 KB payload, off over on (issue 17)", "≥ {:g}x"),
            (
                "cpu_ratio_2kb_saturation",
                f"CPU per delivery at fan-out saturation, on over off, {_fmt(members)} members (issue 17)",
                "≤ {:g}x",
            ),
            ("cpu_ratio_2kb_10_msg_s", f"the same at 10 msg/s, {_fmt(members)} members (issue 17)", "≤ {:g}x"),
            ("rss_kb_per_idle_conn_delta", "RSS per idle connection, on less off, KB (issue 17)", "within ±{:g}"),
        ):
            target = measured.get(key, {})
            rows.append((name, goal.format(target.get("goal", 0)), target.get("measured"), bool(target.get("met"))))
    if "jetsock" in results.get("stream", {}):
        stream = results["stream"]["jetsock"]
        measured = stream.get("targets", {})
        idle = _stream_idle(stream, "websocket")
        rss, cpu = measured.get("rss_ratio", {}), measured.get("cpu_ratio_saturation", {})
        rows += [
            (
                f"idle HTTP stream session's RSS over an idle WebSocket's, {_fmt(idle.get('connections'))} each"
                " (issue 16)",
                f"≤ {rss.get('goal', TARGET_STREAM_RSS_RATIO):g}x",
                rss.get("measured"),
                bool(rss.get("met")),
            ),
            (
                "CPU per delivery at fan-out saturation, stream over WebSocket,"
                f" {_fmt(cpu.get('members'))} members (issue 16)",
                f"≤ {cpu.get('goal', TARGET_STREAM_CPU_RATIO):g}x",
                cpu.get("measured"),
                bool(cpu.get("met")),
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
    fill = result.get("cache_fill") or {}
    if fill:
        workers = fill.get("workers", 1)
        per_worker = fill["edge_cpu_s"] / workers / max(load.get("messages", 1), 1) * 1e6
        lines += [
            f"Pages and joins are answered from each of the {workers} edge workers' history caches"
            " (core/tailcache.py, sized here to hold the whole stream): a worker follows the stream in seq"
            " order, which costs nats-server ~5 µs a message, where reading a room by subject costs it a scan"
            " of the stream (the cost table below). The caches start at a worker's first history read; started"
            f" after the load, they were filled in {fill['seconds']:.1f} s ({fill['edge_cpu_s']:.1f} s of edge"
            f" CPU, {fill['nats_cpu_s']:.1f} s of nats-server CPU): **{per_worker:.0f} µs of a worker's CPU per"
            " message stored** (what every worker serving history pays for each message, beside its"
            f" deliveries), and {fill.get('edge_rss_bytes_per_message', '?')} bytes of its memory per message"
            " held.",
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
        (
            "the same mix read from the stream, counted in-process (core.history: the cache off)",
            counted.get("requests_per_page"),
            "",
            "",
        ),
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
            " `head`: no `before`; `before`: drawn over the stream). Latency is the edge's (from its cache);"
            " the requests are those the same pages cost read from the stream (the cache off), counted"
            " in-process, one direct get each: the head, the counts, the search steps, the forward read.",
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
    costs = result.get("direct_get_costs") or {}
    if costs:
        lines += [
            "What each kind of direct get costs nats-server on this stream (one request at a time, nothing else"
            " running, rooms of the small tier): a room's messages are spread through the whole stream, and the"
            " server finds a subject's next message by scanning its store from the given seq, so what is cheap"
            " is what it can jump to (a room's first and last, a seq), and a read costs about the stream's"
            " messages between the room's.",
            "",
            "| direct get | requests | nats-server CPU per request, µs | round trip, ms |",
            "| --- | ---: | ---: | ---: |",
        ]
        for figures in costs.values():
            cells = [figures.get("requests"), figures.get("nats_cpu_us"), figures.get("round_trip_ms")]
            lines.append(f"| {figures.get('meaning')} | " + " | ".join(_fmt(c) for c in cells) + " |")
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


PRESENCE_STORE = (
    "How presence is stored (core/presencebus.py, core/presence.py): in no store but the edges' memory,"
    " over the core NATS the edges already use. Each node owns the presence of its own connections and"
    " keeps the whole cluster's view, so `who` is a read of local memory, the same on every node. A node"
    " incarnation (its name and a random part, new at each start) numbers what it publishes on"
    " `jetsock.presence.>`: one `delta` per change of one user's connection count in one room on that node"
    " (nothing per member, so a change costs one message, received by every node, whatever the room's"
    " size); a `beat` every `presence_ttl / 3` carrying a digest of its members per room, which lets a"
    " receiver that missed deltas (a NATS reconnect, a late start) see the difference and ask that node"
    " for a `snap`shot of those rooms, so users who stayed get no `left`/`joined` pair; and a `hello` at"
    " start and after a reconnect, which every node answers with a beat at once. A node whose beats stop"
    " for `presence_ttl` is dropped with its members. Everything arrives on one subscription and is applied"
    " in order, so a snapshot and the deltas after it cannot cross."
)


def _per_edge(values: list[Any] | None) -> str | None:
    if not values:
        return None
    return ", ".join(f"edge-{i} {_fmt(v)}" for i, v in enumerate(values))


def _ratio_of(first: Any, second: Any) -> str | None:
    return None if first is None else f"{_fmt(first)} / {_fmt(second)}"


def presence_section(result: dict[str, Any]) -> list[str]:
    """Issue 15's scenario: its figures beside its targets, the churn variant, and the store's design."""
    who, under = result.get("who", {}), result.get("who_under_churn", {})
    churn, join = result.get("churn", {}), result.get("join", {})
    churn_events, join_events = churn.get("events", {}), join.get("events", {})
    variant = result.get("churn_variant", {})
    plain, kept = variant.get("plain", {}), variant.get("presence", {})
    overhead = result.get("churn_presence_overhead")
    raised = result.get("settings", {}).get("JETSOCK_PRESENCE_EVENTS_MAX_MEMBERS")
    lines = [
        "python-socketio has no presence (no list of a room's members a client can read, no join or leave"
        " events): jetsock only.",
        "",
        f"{_fmt(result.get('users'))} users (distinct `sub`s, an `info` claim each) join one presence room over"
        f" {_fmt(join.get('joins_s'))} s, spread over two edges (`jetsock serve`, one process and one node"
        f" each) sharing one nats-server, while {_fmt(result.get('watchers'))} watchers holding"
        " `rooms.presence` are members of the room and receive its events"
        f" ({_fmt(result.get('sampled_watchers'))} of them decode every frame, the rest count frames and bytes);"
        f" {_fmt(result.get('askers'))} clients with the right ask `who`, round robin over both edges, open loop."
        f" Then {_fmt(churn.get('rate'))} users per second leave the room and each joins again"
        f" {_fmt(churn.get('lag_s'))} s later ({_fmt(churn.get('steady_changes_per_s'))} changes/s once the first"
        f" are back), for {_fmt(churn.get('duration_s'))} s with the askers idle, then again while they ask;"
        " `who` is measured after a second of it not counted. `presence_interval`"
        f" {_fmt(result.get('presence_interval'))} s"
        f"{' (the default)' if result.get('presence_interval') == DEFAULT_SETTINGS.presence_interval else ''},"
        " `max_presence_list`"
        f" {_fmt(result.get('max_presence_list'))} (the default: `who` lists the first 1,000 and the count);"
        f" `presence_events_max_members` raised to {raised}: with its default (1,000) a room this big sends"
        " no events at all, only `who` answers.",
        "",
    ]
    churn_delay, join_delay = churn_events.get("delay", {}), join_events.get("delay", {})
    rows: list[tuple[str, Any, str, str]] = [
        ("present users (`who` count)", (who.get("count") or [None])[-1], "", ""),
        ("`who` answered per second, both edges", who.get("per_s"), "", ""),
        ("`who` p50, ms", result.get("p50_ms"), "", ""),
        (
            "`who` p99, ms",
            result.get("p99_ms"),
            f"≤ {TARGET_WHO_P99_MS:g}",
            _met((result.get("p99_ms") or 1e9) <= TARGET_WHO_P99_MS, result.get("p99_ms")),
        ),
        (
            "`who` p50 / p99 while churning, ms",
            _ratio_of(under.get("p50_ms"), under.get("p99_ms")),
            f"≤ {TARGET_WHO_P99_MS:g}",
            _met((under.get("p99_ms") or 1e9) <= TARGET_WHO_P99_MS, under.get("p99_ms")),
        ),
        ("`who` p99 per edge, ms", _per_edge([e.get("p99_ms") for e in who.get("by_edge", {}).values()]), "", ""),
        ("edge CPU per `who`, µs", who.get("edge_cpu_us_per_who"), "", ""),
        ("churn: edge CPU per presence change, per node, µs", _per_edge(churn.get("edge_cpu_us_per_change")), "", ""),
        ("churn: nats-server CPU per change, µs", churn.get("nats_cpu_us_per_change"), "", ""),
        (
            "churn: NATS messages per change, published / delivered (/varz `in_msgs` / `out_msgs`)",
            _ratio_of(churn.get("nats_in_msgs_per_change"), churn.get("nats_out_msgs_per_change")),
            "",
            "",
        ),
        (
            "churn: NATS bytes per change, published / delivered (/varz `in_bytes` / `out_bytes`)",
            _ratio_of(churn.get("nats_in_bytes_per_change"), churn.get("nats_out_bytes_per_change")),
            "",
            "",
        ),
        (
            "churn: presence messages per change, sent / received by the edges (/metrics)",
            _ratio_of(churn.get("bus_sent_per_change"), churn.get("bus_received_per_change")),
            "",
            "",
        ),
        (
            "churn: event delay, join/leave sent to the watcher's frame, p50 / p99, ms",
            _ratio_of(churn_delay.get("p50_ms"), churn_delay.get("p99_ms")),
            "",
            "",
        ),
        ("churn: event bytes per watcher per change", churn_events.get("bytes_per_change_per_watcher"), "", ""),
        (
            "churn: changes the sampled watchers were told of",
            None if "received_fraction" not in churn_events else f"{churn_events['received_fraction']:.1%}",
            "",
            "",
        ),
        (
            "joins: edge CPU per join, per node (connect and authenticate included), µs",
            _per_edge(join.get("edge_cpu_us_per_change")),
            "",
            "",
        ),
        (
            "joins: event delay p50 / p99, ms",
            _ratio_of(join_delay.get("p50_ms"), join_delay.get("p99_ms")),
            "",
            "",
        ),
        (
            "churn scenario, CPU per cycle with the rooms in presence_rooms against without",
            None if overhead is None else f"{overhead:+.1%}",
            f"≤ +{TARGET_CHURN_OVERHEAD:.0%}",
            _met((overhead if overhead is not None else 1e9) <= TARGET_CHURN_OVERHEAD, overhead),
        ),
    ]
    lines += ["| figure | jetsock | target (issue 15) | met |", "| --- | ---: | --- | --- |"]
    lines += [f"| {name} | {_fmt(value)} | {goal} | {met} |" for name, value, goal, met in rows if value is not None]
    lines.append("")
    lines += [
        "Edge CPU per change is each edge's CPU time over the phase divided by every change in the cluster"
        " (each node applies all of them; the leaves and joins themselves are included). NATS figures are the"
        " /varz deltas over the phase less the idle rate measured before it.",
        "",
    ]
    if plain and kept:
        lines += [
            "The `churn` scenario's loops (connect, authenticate, join, close; "
            f"{_fmt(variant.get('seconds_per_run'))} s per turn, plain / presence / presence / plain) on two"
            " systems side by side, the same but for `JETSOCK_PRESENCE_ROOMS=churn.>` (no client holds the"
            " presence right, so no events are pushed):",
            "",
            "| churned rooms | cycles/s | server CPU per cycle, ms | NATS messages per cycle |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, figures in (("not presence rooms", plain), ("in presence_rooms", kept)):
            cells = [figures.get("churn_per_s"), figures.get("cpu_ms_per_cycle"), figures.get("nats_in_msgs_per_cycle")]
            lines.append(f"| {name} | " + " | ".join(_fmt(c) for c in cells) + " |")
        lines.append("")
    recorded = variant.get("profile")
    if recorded and recorded.get("samples"):
        shares = recorded.get("presence_share", {})
        lines += [
            "Where one worker's time goes in that churn with its rooms in presence_rooms (py-spy,"
            f" {recorded['samples']} samples, a turn apart from the measured ones), self time:",
            "",
            "| function | share |",
            "| --- | ---: |",
        ]
        lines += [f"| `{name}` | {share:.1%} |" for name, share in recorded["self"][:10]]
        lines.append("")
        if shares:
            lines += [
                "The same samples, in all (the function or what it calls): nats-py's flusher writes every"
                " message to NATS, and without presence the churn sends next to nothing there.",
                "",
                "| function | share |",
                "| --- | ---: |",
            ]
            lines += [f"| `{name}` | {share:.1%} |" for name, share in shares.items()]
            lines.append("")
    lines += [PRESENCE_STORE, ""]
    return lines


def _cut(off: Any, on: Any) -> str | None:
    if not isinstance(off, (int, float)) or not isinstance(on, (int, float)) or not on:
        return None
    return f"{off / on:.2f}x"


def compression_section(systems: dict[str, dict[str, Any]]) -> list[str]:
    """Issue 17's scenario: compression on vs off on both systems, its targets, and payload shapes."""
    names = [s for s in SYSTEM_ORDER if s in systems]
    any_result = systems[names[0]]
    level, threshold = any_result.get("compress_level"), any_result.get("compress_min_bytes")
    lines = [
        "Each variant runs twice on the same system, once with the clients offering permessage-deflate as"
        " Chromium does (the lean client inflates and compresses every message it sends) and once without,"
        " with the bench's ~100-byte payload and a ~2 KB one: a chat message with its metadata (two sentences,"
        " rich-text blocks, the author's profile, reactions, an attachment, the thread, read receipts;"
        " `bench/payloads.py`), every one different. Wire bytes are the WebSocket frames of the room"
        " messages as the clients read them, header included, per delivery. jetsock compresses each room"
        f" message of at least {_fmt(threshold)} bytes once per node (level {_fmt(level)}, no context"
        " takeover, the same bytes to every compressing member) and keeps no compression state per"
        " connection; python-socketio serves on aiohttp, whose WebSocketResponse takes the same offer"
        " (compress=True, its default) and compresses every frame with a compressor of its own per"
        " connection, with context takeover (so its messages also refer to the ones before: smaller on"
        " the wire, but one compression per member and zlib state per connection). Idle RSS is read on a"
        " fresh system per variant, once connected and again after every connection got one 2 KB message.",
        "",
    ]
    fan_rows, chat_rows = [], []
    for name in names:
        result = systems[name]
        fanout = {(f["payload"], f["deflate"]): f for f in result.get("fanout", [])}
        chat = {(c["payload"], c["deflate"]): c for c in result.get("chat", [])}
        for (payload, deflate), f in fanout.items():
            off = fanout.get((payload, False), {})
            cells = [
                name,
                payload,
                "on" if deflate else "off",
                f.get("members"),
                f.get("wire_bytes_per_delivery"),
                _cut(off.get("wire_bytes_per_delivery"), f.get("wire_bytes_per_delivery")) if deflate else "",
                f.get("cpu_us_per_delivery_10_msg_s"),
                f.get("cpu_us_per_delivery_saturation"),
                f.get("deliveries_per_s_saturation"),
                f.get("saturation_rate"),
            ]
            fan_rows.append("| " + " | ".join(_fmt(c) if c != "" else "" for c in cells) + " |")
        for (payload, deflate), c in chat.items():
            off = chat.get((payload, False), {})
            cells = [
                name,
                payload,
                "on" if deflate else "off",
                c.get("connections"),
                c.get("wire_bytes_per_delivery"),
                _cut(off.get("wire_bytes_per_delivery"), c.get("wire_bytes_per_delivery")) if deflate else "",
                c.get("cpu_us_per_delivery"),
                c.get("deliveries_per_s"),
                c.get("p50_ms"),
                c.get("p99_ms"),
            ]
            chat_rows.append("| " + " | ".join(_fmt(x) if x != "" else "" for x in cells) + " |")
    lines += [
        "Fan-out: one room; a backend publishes at 10 msg/s, then at rising rates until deliveries/s stop growing.",
        "",
        "| system | payload | compression | members | wire bytes per delivery | cut | CPU µs/delivery at 10 msg/s"
        " | at saturation | deliveries/s at saturation | saturation rate, msg/s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *fan_rows,
        "",
        "Chat: rooms of 10, every client publishing (compressed when on) once per interval.",
        "",
        "| system | payload | compression | connections | wire bytes per delivery | cut | CPU µs/delivery"
        " | deliveries/s | p50, ms | p99, ms |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *chat_rows,
        "",
        "Idle: connections in 2 rooms each, RSS per connection.",
        "",
        "| system | compression | connections | KB per connection, connected | after one 2 KB message |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name in names:
        for point in systems[name].get("idle", []):
            cells = [point.get("connections"), point.get("rss_kb_per_conn_idle")]
            cells.append(point.get("rss_kb_per_conn_after_a_message"))
            on = "on" if point.get("deflate") else "off"
            lines.append(f"| {name} | {on} | " + " | ".join(_fmt(c) for c in cells) + " |")
    lines.append("")
    lines += [
        "Issue 17's targets, each system measured the same way (jetsock's are the ones set):",
        "",
        "| target | goal | " + " | ".join(names) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in names) + " |",
    ]
    for key, label, goal in (
        ("wire_cut_2kb", "2 KB payload: wire bytes per delivery, off over on (fan-out)", f"≥ {TARGET_WIRE_CUT:g}x"),
        ("cpu_ratio_2kb_saturation", "2 KB: CPU per delivery at saturation, on over off", f"≤ {TARGET_CPU_RATIO:g}x"),
        ("cpu_ratio_2kb_10_msg_s", "2 KB: CPU per delivery at 10 msg/s, on over off", f"≤ {TARGET_CPU_RATIO:g}x"),
        (
            "rss_kb_per_idle_conn_delta",
            "RSS per idle connection after a message, on less off, KB",
            f"within ±{TARGET_RSS_KB:g}",
        ),
    ):
        cells = []
        for name in names:
            target = systems[name].get("targets", {}).get(key, {})
            value = target.get("measured")
            cells.append(f"{_fmt(value)} ({_met(bool(target.get('met')), value)})" if value is not None else "—")
        lines.append(f"| {label} | {goal} | " + " | ".join(cells) + " |")
    lines.append("")
    shapes = any_result.get("shapes", [])
    if shapes:
        lines += [
            "What the edge's compressor does to a few payloads as `msg` frames, each on its own (no context:"
            " what every jetsock member gets), computed apart from any server:",
            "",
            "| payload | frame bytes | compressed | ratio |",
            "| --- | ---: | ---: | ---: |",
        ]
        for shape in shapes:
            cells = [shape["frame_bytes"], shape["compressed_frame_bytes"], f"{shape['ratio']:.2f}x"]
            lines.append(f"| {shape['payload']} | " + " | ".join(_fmt(c) for c in cells) + " |")
        lines.append("")
    return lines


def _stream_idle(result: dict[str, Any], transport: str, posts: str = "keepalive") -> dict[str, Any]:
    rows = result.get("idle", [])
    return next((r for r in rows if r["transport"] == transport and (r.get("posts") or "keepalive") == posts), {})


def _stream_pair(summary: dict[str, Any], keys: tuple[str, ...] = ("p50_ms", "p99_ms", "p999_ms")) -> str | None:
    if not summary or keys[0] not in summary:
        return None
    return " / ".join(_fmt(summary.get(k)) for k in keys)


def _busy_pair(fanout: dict[str, Any]) -> str | None:
    server, loadgen = fanout.get("cpu_busy_saturation"), fanout.get("loadgen_cpu_busy_saturation")
    return None if server is None or loadgen is None else f"{server:g} / {loadgen:g}"


def stream_section(result: dict[str, Any]) -> list[str]:
    """Issue 16's scenario: HTTP stream sessions beside WebSocket connections, its targets, the variants."""
    heartbeat = result.get("heartbeat") or DEFAULT_SETTINGS.heartbeat
    ws, st = _stream_idle(result, "websocket"), _stream_idle(result, "stream")
    apart = _stream_idle(result, "stream", "close")
    fan = {f["transport"]: f for f in result.get("fanout", [])}
    chat = {c["transport"]: c for c in result.get("chat", [])}
    fws, fst = fan.get("websocket", {}), fan.get("stream", {})
    cws, cst = chat.get("websocket", {}), chat.get("stream", {})
    summary, targets = result.get("summary", {}), result.get("targets", {})
    rss_target, cpu_target = targets.get("rss_ratio", {}), targets.get("cpu_ratio_saturation", {})
    moderate = fst.get("moderate_rate") or fws.get("moderate_rate")
    window = ws.get("idle_seconds")
    lines = [
        "python-socketio's fallback is Engine.IO long-polling, another protocol with its own costs (and sticky"
        " sessions): this compares jetsock's HTTP stream (PROTOCOL.md section 11) with jetsock's WebSocket.",
        "",
        "The lean client opens a session with `POST /v1/stream` (HTTP/1.1, `Authorization: Bearer`, its joins in"
        " the body), reads the chunked `text/event-stream` answer as it comes (one `data:` event per server"
        " frame, the same JSON as a WebSocket's) and posts its frames to `/v1/stream/<session>` one request at a"
        f" time, with a `ping` every heartbeat ({heartbeat:g} s) so that the edge does not close it with 4009."
        " Its posts go over one keep-alive connection per session, as a browser's or the SDK's connection pool"
        " sends them: a session holds two sockets, the stream and its posts (the variant with a connection per"
        " post shows the session alone). Two workers on one nats-server; a post may reach the worker that does"
        " not hold its session, which hands it over NATS, as another node would. Idle clients are in 2 rooms"
        f" each, on a fresh system per variant, RSS read once connected and after {_fmt(window)} s idle (every"
        " stream session has posted its pings by then); fan-out and chat run WebSockets first, then streams, on"
        " one system (the idle WebSockets' system, after them).",
        "",
        "| figure | WebSocket | HTTP stream | stream over WebSocket | target (issue 16) | met |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]

    def row(label: str, a: Any, b: Any, ratio: Any = None, goal: str = "", met: str = "") -> None:
        if a is None and b is None:
            return
        shown = f"{ratio:.2f}x" if isinstance(ratio, (int, float)) else ""
        lines.append(f"| {label} | {_fmt(a)} | {_fmt(b)} | {shown} | {goal} | {met} |")

    row(
        "idle: clients held (still receiving) of those opened",
        None if not ws else f"{_fmt(ws.get('held'))} of {_fmt(ws.get('attempted'))}",
        None if not st else f"{_fmt(st.get('held'))} of {_fmt(st.get('attempted'))}",
    )
    row("idle: server sockets per client", ws.get("server_sockets_per_conn"), st.get("server_sockets_per_conn"))
    row(
        f"idle: RSS per client after {_fmt(window)} s idle, KB",
        ws.get("rss_kb_per_conn"),
        st.get("rss_kb_per_conn"),
        summary.get("rss_ratio"),
        f"≤ {rss_target.get('goal', TARGET_STREAM_RSS_RATIO):g}x",
        _met(bool(rss_target.get("met")), rss_target.get("measured")),
    )
    row(
        "idle: RSS per client once connected (before the first ping), KB",
        ws.get("rss_kb_per_conn_connected"),
        st.get("rss_kb_per_conn_connected"),
        summary.get("rss_ratio_connected"),
    )
    row(
        "idle: the same, the stream's posts on a connection each, after the idle window, KB",
        ws.get("rss_kb_per_conn"),
        apart.get("rss_kb_per_conn"),
        summary.get("rss_ratio_posts_apart"),
    )
    row(
        "idle: CPU per client per minute, ms (heartbeats; a stream's ping is a post)",
        ws.get("cpu_ms_per_conn_per_min"),
        st.get("cpu_ms_per_conn_per_min"),
        summary.get("idle_cpu_ratio"),
    )
    row("idle: posts per session per minute, post round trip p50 / p99, ms", None, _posts_cell(st))
    row("idle: CPU per ping post, less a WebSocket's heartbeat, µs", None, _per_ping(ws, st))
    row("fan-out: members", fws.get("members"), fst.get("members"))
    row(
        "fan-out: wire bytes per delivery (frame; SSE event in its chunk)",
        fws.get("wire_bytes_per_delivery"),
        fst.get("wire_bytes_per_delivery"),
        _ratio_value(fst.get("wire_bytes_per_delivery"), fws.get("wire_bytes_per_delivery")),
    )
    row(
        f"fan-out: latency at {_fmt(moderate)} msg/s, p50 / p99 / p99.9, ms (ratio: of the p99s)",
        _stream_pair(fws.get("latency_moderate", {})),
        _stream_pair(fst.get("latency_moderate", {})),
        _ratio_value(fst.get("latency_moderate", {}).get("p99_ms"), fws.get("latency_moderate", {}).get("p99_ms")),
    )
    row(
        "fan-out: server CPU per delivery at 10 msg/s, µs",
        fws.get("cpu_us_per_delivery_10_msg_s"),
        fst.get("cpu_us_per_delivery_10_msg_s"),
        summary.get("cpu_ratio_10_msg_s"),
    )
    row(
        "fan-out: server CPU per delivery at saturation, µs",
        fws.get("cpu_us_per_delivery_saturation"),
        fst.get("cpu_us_per_delivery_saturation"),
        summary.get("cpu_ratio_saturation"),
        f"≤ {cpu_target.get('goal', TARGET_STREAM_CPU_RATIO):g}x",
        _met(bool(cpu_target.get("met")), cpu_target.get("measured")),
    )
    same = summary.get("cpu_ratio_same_rate") or {}
    if same:
        row(
            f"fan-out: server CPU per delivery at the highest rate both ran ({_fmt(same.get('rate'))} msg/s), µs",
            same.get("websocket_cpu_us_per_delivery"),
            same.get("stream_cpu_us_per_delivery"),
            same.get("ratio"),
        )
    row(
        "fan-out at saturation: cores busy, server / load generators",
        _busy_pair(fws),
        _busy_pair(fst),
    )
    row(
        "fan-out: deliveries/s at saturation (publish rate, msg/s)",
        _with_rate(fws),
        _with_rate(fst),
        _ratio_value(fst.get("deliveries_per_s_saturation"), fws.get("deliveries_per_s_saturation")),
    )
    row("fan-out: p99 at saturation, ms", fws.get("p99_ms_saturation"), fst.get("p99_ms_saturation"))
    row("fan-out: members closed by the edge (code: count)", _closes(fws), _closes(fst))
    row("chat: connections (rooms of 10)", cws.get("connections"), cst.get("connections"))
    row(
        "chat: server CPU per delivery, µs (a stream's publish is a post)",
        cws.get("cpu_us_per_delivery"),
        cst.get("cpu_us_per_delivery"),
        summary.get("chat_cpu_ratio"),
    )
    row(
        "chat: latency, p50 / p99 / p99.9, ms (ratio: of the p99s)",
        _stream_pair(cws),
        _stream_pair(cst),
        _ratio_value(cst.get("p99_ms"), cws.get("p99_ms")),
    )
    row("chat: published / acked", _acked(cws), _acked(cst))
    row("chat: post round trip p50 / p99, ms", None, _stream_pair(cst.get("post_round_trip", {}), ("p50_ms", "p99_ms")))
    lines.append("")
    idle = result.get("idle", [])
    if idle:
        lines += [
            "Idle clients, each variant on a fresh system:",
            "",
            "| clients | posts | held of opened | server sockets per client | KB per client, connected"
            " | after the idle window | CPU ms per client per minute | posts per client per minute | closes |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for point in idle:
            posts = {"keepalive": "one kept connection", "close": "a connection each"}.get(point.get("posts") or "", "")
            cells = [
                f"{_fmt(point.get('held'))} of {_fmt(point.get('attempted'))}",
                point.get("server_sockets_per_conn"),
                point.get("rss_kb_per_conn_connected"),
                point.get("rss_kb_per_conn"),
                point.get("cpu_ms_per_conn_per_min"),
                point.get("posts_per_conn_per_min") if point["transport"] == "stream" else None,
            ]
            closes = ", ".join(f"{code}: {n}" for code, n in sorted(point.get("closes", {}).items())) or "none"
            lines.append(f"| {point['transport']} | {posts} | " + " | ".join(_fmt(c) for c in cells) + f" | {closes} |")
        lines.append("")
    if fws.get("steps") and fst.get("steps"):
        lines += [
            "Fan-out step by step (a backend publishing ~100-byte messages to one room), WebSocket then stream:",
            "",
            "| msg/s | WebSocket deliveries/s | CPU µs/delivery | p50 / p99, ms | stream deliveries/s"
            " | CPU µs/delivery | p50 / p99, ms |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        by_rate = {s["rate"]: s for s in fst["steps"]}
        for step in fws["steps"]:
            other = by_rate.get(step["rate"], {})
            cells = [
                step["rate"],
                step.get("deliveries_per_s"),
                step.get("cpu_us_per_delivery"),
                _stream_pair(step, ("p50_ms", "p99_ms")),
                other.get("deliveries_per_s"),
                other.get("cpu_us_per_delivery"),
                _stream_pair(other, ("p50_ms", "p99_ms")),
            ]
            lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
        lines.append("")
    lines += [
        "CPU is the two workers' (user + system) over the deliveries the clients counted; RSS the workers' over"
        " the clients. The stream's cost at low rates includes its heartbeat posts (an HTTP request each, handed"
        " over NATS when it reached the other worker), which a WebSocket's pings do not need; latency includes"
        " the load generator's own time through its members (the same client code for both but for the"
        " framing). A WebSocket member answers the edge's ping only when it reads it, behind whatever it has not"
        " read yet, so at saturation, seconds behind, some are closed with 4009 once the last step is over; a"
        " stream posts its pings on a timer. In the chat each client publishes"
        f" {_fmt(_per_client(cst))} times, and a session opened just before has not pinged yet: its first publish"
        " opens its post connection (as a browser's first post does), so about half of the stream's publishes"
        " include a TCP connect, which its p99 shows; a session that has been up a heartbeat posts on a kept"
        " connection.",
        "",
    ]
    return lines


def _per_client(chat: dict[str, Any]) -> float | None:
    if not chat.get("connections") or "published" not in chat:
        return None
    return round(float(chat["published"]) / float(chat["connections"]), 1)


def _closes(run: dict[str, Any]) -> str | None:
    if "closes" not in run:
        return None
    return ", ".join(f"{code}: {_fmt(n)}" for code, n in sorted(run["closes"].items())) or "none"


def _per_ping(ws: dict[str, Any], st: dict[str, Any]) -> float | None:
    """The stream's idle CPU beyond the WebSocket's, per ping it posted (its keepalive comment is
    written as a WebSocket's ping is)."""
    posts = st.get("posts_per_conn_per_min")
    if not posts or "cpu_ms_per_conn_per_min" not in st or "cpu_ms_per_conn_per_min" not in ws:
        return None
    extra = float(st["cpu_ms_per_conn_per_min"]) - float(ws["cpu_ms_per_conn_per_min"])
    return round(extra / float(posts) * 1000, 1)


def _ratio_value(a: Any, b: Any) -> float | None:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b:
        return None
    return a / b


def _with_rate(fanout: dict[str, Any]) -> str | None:
    if "deliveries_per_s_saturation" not in fanout:
        return None
    return f"{_fmt(fanout['deliveries_per_s_saturation'])} ({_fmt(fanout.get('saturation_rate'))})"


def _acked(chat: dict[str, Any]) -> str | None:
    return None if "published" not in chat else f"{_fmt(chat['published'])} / {_fmt(chat.get('acked'))}"


def _posts_cell(idle: dict[str, Any]) -> str | None:
    if "posts_per_conn_per_min" not in idle:
        return None
    trip = _stream_pair(idle.get("post_round_trip", {}), ("p50_ms", "p99_ms"))
    return f"{_fmt(idle['posts_per_conn_per_min'])}, {trip or '—'}"


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
        elif scenario == "presence":
            if "jetsock" in results.get(scenario, {}):
                lines += ["## presence", "", *presence_section(results[scenario]["jetsock"])]
        elif scenario == "compression":
            if results.get(scenario):
                lines += ["## compression", "", *compression_section(results[scenario])]
        elif scenario == "stream":
            if "jetsock" in results.get(scenario, {}):
                lines += ["## stream", "", *stream_section(results[scenario]["jetsock"])]
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
