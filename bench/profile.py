"""Sample natskiq's hot paths with py-spy: ``python -m bench.profile worker|enqueue|bulk``.

* ``worker``: N no-op jobs stored first, then one ``natskiq worker`` runs them
  under ``py-spy record`` (CPU samples only, the idle event loop excluded);
* ``enqueue``: a process doing ``Noop.perform_async`` N times, sampled alike;
* ``bulk``: the same with ``Noop.perform_bulk``;
* ``calls``: the worker's run in-process (:class:`natskiq.ops.launcher.Launcher`,
  INFO logging to a file as the CLI sets it up) under cProfile, reported per
  job: how often each function runs and what it costs, which the sampling
  profiles cannot tell (cProfile's own overhead inflates the times, not the
  counts); the raw stats go to ``bench/results/profile-calls.pstats``.

It prints where the samples fall (self time by package and by function, and
inclusive time by function) and keeps py-spy's collapsed stacks in
``bench/results/profile-<mode>.txt`` for a flame graph. py-spy must be
installed (``pip install py-spy``); it needs ptrace, which root has.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

import natskiq
from natskiq.cli import configure_logging
from natskiq.ops.launcher import Launcher, Settings
from natskiq.ops.server import Server

from . import recorder
from .common import ROOT, Context, natskiq_worker, stop, wait_records
from .workers import Noop

RESULTS = ROOT / "bench" / "results"
FRAME = re.compile(r"^(?P<name>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        sys.exit("py-spy is not installed: pip install py-spy")
    return found


def _where(file: str) -> str:
    """A short name for a source file: package/module."""
    parts = Path(file).parts
    for anchor in ("site-packages", "src", "lib"):
        if anchor in parts:
            rest = parts[len(parts) - parts[::-1].index(anchor) :]
            if anchor == "lib" and rest and rest[0].startswith("python"):
                rest = ("stdlib", *rest[1:])
            return "/".join(rest)
    return "/".join(parts[-2:])


def _package(where: str) -> str:
    head = where.split("/")
    if head[0] == "stdlib":
        return head[1].removesuffix(".py") if len(head) > 1 else "stdlib"
    return head[0].removesuffix(".py")


def summarise(collapsed: Path, top: int = 25) -> str:
    """Self and inclusive sample shares from py-spy's raw (collapsed) output."""
    own: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = []
        for frame in stack.split(";"):
            match = FRAME.match(frame)
            name, file = (match["name"], match["file"]) if match else (frame, "?")
            frames.append(f"{name} ({_where(file)})")
        own[frames[-1]] += count
        packages[_package(frames[-1].rsplit("(", 1)[1].rstrip(")"))] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{total} samples (CPU only)", "", "self time by package:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in packages.most_common(12)]
    lines += ["", "self time by function:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    lines += ["", "inclusive time by function:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top + 15)]
    return "\n".join(lines)


def _spy_args(out: Path) -> list[str]:
    return [_py_spy(), "record", "--rate", "500", "--format", "raw", "--nonblocking", "-o", str(out)]


def _attach(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling a running process until it exits."""
    return subprocess.Popen([*_spy_args(out), "-p", str(pid)])


async def _fill(url: str, namespace: str, n: int) -> None:
    async with natskiq.connect(url, namespace=namespace):
        await Noop.perform_bulk([[i] for i in range(n)])


async def profile_worker(url: str, scratch: Path, n: int, out: Path, extra: list[str]) -> None:
    ctx = Context(url=url, n=n, samples=0, scratch=scratch)
    namespace = ctx.name("p")
    rec = ctx.record_file("profile")
    await _fill(url, namespace, n)
    proc = natskiq_worker(ctx, namespace, rec, *extra)
    spy = _attach(proc.pid, out)
    try:
        started = time.monotonic()
        records = await wait_records(rec, n, timeout=600)
        print(f"{len(records)} jobs in {time.monotonic() - started:.1f} s (wall, including start-up)")
    finally:
        stop([proc])
        spy.wait(30)


async def calls(url: str, scratch: Path, n: int, top: int) -> str:
    """The in-process worker under cProfile; returns a per-job table."""
    ctx = Context(url=url, n=n, samples=0, scratch=scratch)
    namespace = ctx.name("p")
    rec = ctx.record_file("calls")
    os.environ[recorder.ENV] = str(rec)
    log_file = (scratch / "calls.log").open("a")  # natskiq's CLI logs the same way, to stderr
    configure_logging("info", log_file)
    await _fill(url, namespace, n)
    launcher = Launcher(Settings(url=url, namespace=namespace, app=("bench.workers",)))
    profiler = cProfile.Profile()
    async with anyio.create_task_group() as tg:
        await tg.start(launcher.run)
        profiler.enable()
        records = await wait_records(rec, n, timeout=600)
        profiler.disable()
        launcher.stop()
    profiler.dump_stats(RESULTS / "profile-calls.pstats")
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    lines = [f"{len(records)} jobs under cProfile; per job: calls, own us, cumulative us", ""]
    for (file, line, name), (_, ncalls, own, cumulative, _) in rows:
        where = f"{name} ({_where(file)}:{line})"
        lines.append(f"  {ncalls / n:7.2f}  {own / n * 1e6:7.1f}  {cumulative / n * 1e6:8.1f}  {where}")
    wanted = ("publish", "dumps", "loads", "start_soon", "_notify", "writelines", "info", "create_task")
    lines += ["", "selected call counts per job:"]
    for (file, line, name), (_, ncalls, *_) in sorted(stats.items(), key=lambda i: -i[1][1]):
        if any(name == w or name.endswith(w) for w in wanted) and ncalls >= n / 10:
            lines.append(f"  {ncalls / n:7.2f}  {name} ({_where(file)}:{line})")
    return "\n".join(lines)


def _producer(url: str, namespace: str, n: int, mode: str) -> None:
    """The sampled producer process (``python -m bench.profile _produce ...``)."""

    async def run() -> None:
        async with natskiq.connect(url, namespace=namespace) as client:
            await client.ensure_queue("default")
            started = time.perf_counter()
            if mode == "bulk":
                await Noop.perform_bulk([[i] for i in range(n)])
            else:
                for i in range(n):
                    await Noop.perform_async(i)
            print(f"{n} jobs enqueued ({mode}) at {n / (time.perf_counter() - started):,.0f}/s")

    anyio.run(run)


def profile_producer(url: str, n: int, mode: str, out: Path) -> None:
    cmd = [sys.executable, "-m", "bench.profile", "_produce", url, f"p{time.time_ns() % 10**8}", str(n), mode]
    subprocess.run([*_spy_args(out), "--", *cmd], cwd=ROOT, check=True)


def main() -> None:
    if sys.argv[1:2] == ["_produce"]:
        _producer(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("worker", "enqueue", "bulk", "calls"))
    parser.add_argument("-n", type=int, help="jobs (worker 30000, enqueue 20000, bulk 100000)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("worker_args", nargs="*", help="extra natskiq worker flags (after --)")
    args = parser.parse_args()
    n = args.n or {"worker": 30_000, "enqueue": 20_000, "bulk": 100_000, "calls": 10_000}[args.mode]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"profile-{args.mode}.txt"
    with tempfile.TemporaryDirectory(prefix="natskiq-profile-") as scratch:
        server = Server(store_dir=Path(scratch) / "store")
        url = server.start()
        try:
            if args.mode == "calls":
                print(anyio.run(calls, url, Path(scratch), n, args.top))
                return
            if args.mode == "worker":
                anyio.run(profile_worker, url, Path(scratch), n, out, args.worker_args)
            else:
                profile_producer(url, n, args.mode, out)
        finally:
            server.stop()
    print(summarise(out, args.top))
    print(f"\ncollapsed stacks: {out}")


if __name__ == "__main__":
    main()
