"""The load benchmark's reports: tables, machine facts and the Markdown files beside the JSON."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any


def phase_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """The daemon's loop phases over the measured intervals, ms per forecast, one line per mode."""
    lines = []
    for mode, r in results.items():
        phases = r.get("measured", {}).get("phase_ms_per_forecast")
        if phases:
            parts = ", ".join(f"{k} {v:.3f}" for k, v in sorted(phases.items(), key=lambda kv: -kv[1]) if v >= 0.0005)
            lines.append(f"- {mode}: the daemon's loop phases (`kronos_loop_phase_seconds`), ms per forecast: {parts}.")
    return [*lines, ""] if lines else []


def steady_table(results: dict[str, dict[str, Any]]) -> list[str]:
    rows = [
        "| mode | symbols | interval s | forecasts/s | latency p50 ms | p90 ms | p99 ms | max ms "
        "| daemon e2e p50/p99 ms | model calls (mean batch) | model busy | close to last forecast s (median/worst) | lag at end "
        "| kept up | warm/rebuilt/refreshed (evicted) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for mode, r in results.items():
        if "measured" not in r:
            error = " ".join(str(r.get("error", "?")).split())[:300].replace("|", "/")
            rows.append(f"| {mode} | failed: {error} ||||||||||||||")
            continue
        m = r["measured"]
        lat, own = m["latency_ms"], m["daemon_end_to_end_ms"]
        rows.append(
            f"| {mode} | {m['symbols']} | {m['interval_s']:g} | {m['forecasts_per_s']} | {lat['p50']} | {lat['p90']} "
            f"| {lat['p99']} | {lat['max']} | {own['p50']} / {own['p99']} | {m['model_calls']} ({m['mean_batch']}) "
            f"| {m['model_busy_share']:.0%} | {m['median_interval_s']} / {m['worst_interval_s']} | {m['lag_at_end']} "
            f"| {'yes' if m['kept_up'] else 'no'} | {served_cell(m.get('served'))} |"
        )
    return rows


SERVED_NOTE = (
    "how the daemon's model calls served the bars, counted by scripts/benchload/probe.py around the daemon's "
    "model: from a warm session (only the new bar runs), rebuilt from the stored token cache (no matching "
    "warm session), or refreshed (new statistics, whole window: cold start, every refresh_every bars, a "
    "price beyond drift_sigma, or the window outgrew the cache); *evicted*: warm sessions the session pool "
    "dropped to give a batch one contiguous run of slots."
)


def machine_line(mf: dict[str, Any]) -> str:
    return (
        f"{mf['date']}; {mf['cores']} cores ({mf['cpu']}), torch {mf['torch']} on CPU with "
        f"{mf['torch_threads']} thread(s); load average before {mf['load_avg_before']}, after "
        f"{mf['load_avg_after']} (the machine is shared with other jobs). Daemon subprocess, broker and "
        "Redis on this machine (loopback)."
    )


def write_steady_markdown(path: Path, report: dict[str, Any]) -> None:
    a, mf = report["settings"], report["machine"]
    lines = [
        "# Daemon steady-state benchmark (real Kafka and Redis)",
        "",
        machine_line(mf),
        "",
        f"Model `{a['model']}`, max_context {a['max_context']}, horizon {a['horizon']}, sample_count "
        f"{a['sample_count']}; {a['steady']} symbols warmed up with {a['warm_bars']} bars each, then one bar per "
        f"symbol every {a['interval']:g} s, each landing at a random moment within {a['spread']:g} s of the close; "
        f"{a['steady_warmup']} interval(s) not measured, then {a['intervals']} measured; {a['partitions']} "
        f"partitions; daemon max_batch_size {a['max_batch']}, max_wait_ms {a['max_wait_ms']}. "
        "Command: `" + report["command"] + "`.",
        "",
        *steady_table(report["modes"]),
        "",
        *phase_lines(report["modes"]),
        "- *latency*: from just before this process sent a bar (its arrival) until it read that bar's "
        "forecast from the output topic. *daemon e2e*: the forecast's own `latency_ms.end_to_end` (the "
        "bar's Kafka timestamp until the forecast was handed to the producer).",
        "- *forecasts/s*: forecasts read during the measured intervals / their length. *model calls (mean "
        "batch)* and *model busy* (model time / measured time): the daemon's /metrics (`kronos_batch_size`, "
        "`kronos_model_step_seconds`) over the measured intervals.",
        "- *close to last forecast*: from a bar close until the last forecast of that close was read, the "
        "median and the worst of the measured closes. *lag at end*: input messages not yet committed by "
        "the daemon's group when the measured intervals ended. *kept up*: every close's forecasts out before the next close, no lag at the end, "
        "none missing.",
        "- *warm/rebuilt/refreshed (evicted)*, incremental mode, over the measured closes: " + SERVED_NOTE
        + f" Warm sessions allowed: max_sessions {a.get('max_sessions')}; refresh_every {a.get('refresh_every')}.",
        "",
    ]
    path.write_text("\n".join(lines))


def served_cell(served: dict[str, int] | None) -> str:
    """``warm/rebuilt/refreshed (evicted)`` of a burst (``-`` in exact mode)."""
    if not served:
        return "-"
    return (f"{served.get('warm', 0)}/{served.get('rebuild', 0)}/{served.get('refresh', 0)} "
            f"({served.get('evicted', 0)})")


def burst_table(results: dict[str, dict[str, Any]]) -> list[str]:
    rows = [
        "| mode | symbols | time to last forecast ms | model calls (mean batch) | daemon model ms "
        "| one engine call ms | efficiency | model share | overhead ms/forecast | publish acked ms "
        "| warm/rebuilt/refreshed (evicted) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, r in results.items():
        if "error" in r:
            rows.append(f"| {mode} | failed: {' '.join(str(r['error']).split())[:300]} |||||||||")
            continue
        for b in r["bursts"]:
            rows.append(
                f"| {mode} | {b['symbols']} | {b['time_to_last_forecast_s'] * 1e3:.0f} | {b['daemon_model_calls']} "
                f"({b['daemon_mean_batch']}) | {b['daemon_model_s'] * 1e3:.0f} | {b['engine_one_call_s'] * 1e3:.0f} "
                f"| {b['efficiency']:.0%} | {b['model_share']:.0%} | {b['overhead_ms_per_forecast']:.3f} "
                f"| {b['publish_acked_s'] * 1e3:.0f} | {served_cell(b.get('served'))} |"
            )
    return rows


def write_burst_markdown(path: Path, report: dict[str, Any]) -> None:
    a, mf = report["settings"], report["machine"]
    lines = [
        "# Daemon burst benchmark (real Kafka and Redis)",
        "",
        machine_line(mf),
        "",
        f"Model `{a['model']}`, max_context {a['max_context']}, horizon {a['horizon']}, sample_count "
        f"{a['sample_count']}; warm-up {a['warm_bars']} bars per symbol for {max(a['burst_sizes'])} symbols, "
        f"then the first N symbols each send one bar at the same instant ({a['burst_repeats']} bursts per N); "
        f"{a['partitions']} partitions; daemon max_batch_size {a['max_batch']}, max_wait_ms {a['max_wait_ms']}. "
        "Command: `" + report["command"] + "`.",
        "",
        *burst_table(report["modes"]),
        "",
        "- *time to last forecast*: from just before the first send of the burst until the last of its "
        "forecasts was read from the output topic (by this process).",
        "- *one engine call*: the same model, built in this process from the daemon's settings, forecasting "
        "the burst's windows in one batched call (fastest of two), after the burst.",
        "- *efficiency* = one engine call / time to last forecast. The engine call is timed at another "
        "moment than the burst, so on a busy machine it can come out above 100%; *model share* = the "
        "daemon's own model time during the burst / time to last forecast (timed together).",
        "- *overhead ms/forecast* = (time to last forecast - the daemon's model time) / N: JSON, Kafka, "
        "Redis and bookkeeping, the linger, plus the publishing (*publish acked*: until the broker "
        "acknowledged the whole burst) and the reading in this process.",
        "- Incremental mode: *one engine call* is a warm call (an untimed call over the windows one bar "
        "earlier builds the sessions first). *warm/rebuilt/refreshed (evicted)*, per burst: " + SERVED_NOTE
        + f" Warm sessions allowed: max_sessions {a.get('max_sessions')}; refresh_every {a.get('refresh_every')}.",
        "",
    ]
    path.write_text("\n".join(lines))


# -- report ----------------------------------------------------------------------------------------


def machine_facts(args: argparse.Namespace) -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        torch_version = dist_version("torch")
    except PackageNotFoundError:
        torch_version = "?"
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "torch_threads": args.threads,
        "python": platform.python_version(),
        "torch": torch_version,
        "load_avg_before": [round(x, 2) for x in os.getloadavg()],
    }


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    rows = [
        "| mode | sent bars/s | sustained forecasts/s | e2e p50 ms | e2e p99 ms | daemon e2e p50/p99 ms "
        "| model call ms (mean) | mean batch | lag at end | drain bars/s (batch) | warm-up bars/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, r in results.items():
        if "measured" not in r or "drain" not in r:
            error = " ".join(str(r.get("error", "?")).split())[:300].replace("|", "/")
            rows.append(f"| {mode} | failed: {error} |||||||||")
            continue
        m, d = r["measured"], r["drain"]
        own = m["daemon_latency_ms"]["end_to_end"]
        rows.append(
            f"| {mode} | {m['send_rate']} | {m['sustained_rate']} | {m['e2e_ms']['p50']} | {m['e2e_ms']['p99']} "
            f"| {own['p50']} / {own['p99']} | {m['mean_model_call_ms']} | {m['mean_batch']} | {m['lag_at_end']} "
            f"| {d['rate']} ({d['mean_batch']}) | {r['warmup']['rate']} |"
        )
    return rows


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    a, mf = report["settings"], report["machine"]
    lines = [
        "# Daemon load benchmark (real Kafka and Redis)",
        "",
        f"{mf['date']}; {mf['cores']} cores ({mf['cpu']}), torch {mf['torch']} on CPU with "
        f"{mf['torch_threads']} thread(s), Python {mf['python']}; load average before "
        f"{mf['load_avg_before']}, after {mf['load_avg_after']}. The daemon ran as a subprocess "
        "(`python -m daemon run`); the producer and the output reader ran in the benchmark process, and "
        "broker and Redis on the same machine (loopback).",
        "",
        f"Model `{a['model']}` ({a['model_dir']}), max_context {a['max_context']}, horizon {a['horizon']}, "
        f"sample_count {a['sample_count']}; {a['symbols']} symbols, target {a['rate']} bars/s for "
        f"{a['duration']} s after a warm-up of {a['warm_bars']} bars per symbol; input/output topics with "
        f"{a['partitions']} partitions; daemon batch settings at their defaults (256 records per fetch, "
        "20 ms wait). Command: `" + report["command"] + "`.",
        "",
        *table(report["modes"]),
        "",
        "- *sustained*: forecasts read from the output topic during the measured phase / its length.",
        "- *e2e*: this process's clock just before sending a bar until it read that bar's forecast from "
        "the output topic. *daemon e2e*: the forecast's own `latency_ms.end_to_end` (the input message's "
        "Kafka timestamp until the forecast was handed to the producer).",
        "- *lag at end*: input messages not yet committed by the daemon's group when the phase ended.",
        "- *drain*: a backlog published as fast as possible; bars / (first send to last forecast read); "
        "*batch* = mean series per model call while draining.",
        "- *warm-up*: the same drain from empty state (contexts growing to max_context), not measured "
        "for latency.",
        "",
    ]
    path.write_text("\n".join(lines))
