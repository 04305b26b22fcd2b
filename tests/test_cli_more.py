"""More of the `natskiq` command: periodic, cancel, --metrics-port, server --cluster, NATSKIQ_REPLICAS."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import nats
import pytest
from nats.js.errors import NotFoundError

import natskiq
from natskiq import api, cli
from natskiq.enqueue import cron
from natskiq.ops.server import free_ports
from natskiq.topology import Names

from .conftest import Workers, until, wait_for_ledger
from .sample_workers import Record, Tick

ROOT = Path(__file__).resolve().parent.parent
UNREACHABLE = "nats://127.0.0.1:1"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATSKIQ_") or k == "NATSKIQ_TEST_LEDGER"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **extra}


async def natskiq_cli(*argv: str, url: str, namespace: str) -> subprocess.CompletedProcess[str]:
    """`python -m natskiq ARGV --url URL --namespace NS`, its output as text."""
    result = await anyio.run_process(
        [sys.executable, "-m", "natskiq", *argv, "--url", url, "--namespace", namespace],
        cwd=ROOT,
        env=_env(),
        check=False,
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


# -- periodic ---------------------------------------------------------------


async def test_periodic_list_and_remove(client: natskiq.Client, nats_url: str, namespace: str) -> None:
    """`natskiq periodic list` shows stored definitions; `remove NAME` deletes one, exit 1 if none."""
    nightly = cron.Periodic(
        name="nightly", schedule=cron.normalize("0 3 * * *"), worker=Tick.name, queue="default",
        retry=3, args=["nightly"], tz="Europe/Paris",
    )  # fmt: skip
    await client.ensure_queue("default")
    await cron.register(client.js, client.names, [nightly])

    listed = await natskiq_cli("periodic", "list", "--json", url=nats_url, namespace=namespace)
    assert listed.returncode == 0, listed.stderr
    [doc] = json.loads(listed.stdout)["periodic"]
    assert doc["name"] == "nightly" and doc["schedule"] == "0 0 3 * * *" and doc["tz"] == "Europe/Paris"
    assert (doc["queue"], doc["cls"], doc["args"]) == ("default", "tests.Tick", ["nightly"])
    table = await natskiq_cli("periodic", url=nats_url, namespace=namespace)
    assert "nightly" in table.stdout and "Europe/Paris" in table.stdout and "(1 periodic job)" in table.stdout

    removed = await natskiq_cli("periodic", "remove", "nightly", url=nats_url, namespace=namespace)
    assert removed.returncode == 0, removed.stderr
    assert await api.periodic_jobs(client) == []
    again = await natskiq_cli("periodic", "remove", "nightly", url=nats_url, namespace=namespace)
    assert again.returncode == 1
    assert "no periodic job named 'nightly'" in again.stderr
    nameless = await natskiq_cli("periodic", "remove", url=nats_url, namespace=namespace)
    assert nameless.returncode == 2 and "needs the periodic job's name" in nameless.stderr


# -- cancel -----------------------------------------------------------------


async def test_cancel_scheduled_job(client: natskiq.Client, nats_url: str, namespace: str) -> None:
    """`natskiq cancel JID` deletes a scheduled job; a second cancel finds nothing and exits 1."""
    jid = await Record.perform_in(3600, note="never")
    result = await natskiq_cli("cancel", jid, "--json", url=nats_url, namespace=namespace)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"jid": jid, "deleted": ["scheduled"], "running_on": []}
    assert await api.find(client, "scheduled") == []
    again = await natskiq_cli("cancel", jid, url=nats_url, namespace=namespace)
    assert again.returncode == 1
    assert f"job {jid} is not queued" in again.stderr


async def test_cancel_running_job(
    client: natskiq.Client, nats_url: str, namespace: str, workers: Workers, ledger: Path
) -> None:
    """`natskiq cancel JID` stops a job a worker is running and says which node ran it."""
    workers.start(node_id="runner")
    jid = await Record.perform_async(sleep=60, note="cancel me")
    await wait_for_ledger(ledger, 1, kind="start")
    result = await natskiq_cli("cancel", jid, url=nats_url, namespace=namespace)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"cancelled {jid}: ") and "stopped on runner" in result.stdout

    async def settled() -> bool:
        info = await api.queue_info(client, "default")
        return info.ready == 0 and info.running == 0

    await until(settled)
    assert await api.find(client, "retry") == []


def test_cancel_bad_jid_exits_2(tmp_path: Path) -> None:
    """A jid that could not be a job's exits 2 before connecting."""
    result = subprocess.run(
        [sys.executable, "-m", "natskiq", "cancel", "a.b", "--url", UNREACHABLE],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("natskiq: error: ") and "Traceback" not in result.stderr


# -- worker --metrics-port ----------------------------------------------------


def free_port() -> int:
    return free_ports(1)[0]


async def test_worker_serves_prometheus_metrics(
    client: natskiq.Client, workers: Workers, ledger: Path
) -> None:
    """`natskiq worker --metrics-port PORT` answers GET /metrics with Prometheus text counting its jobs."""
    port = free_port()
    workers.start("--metrics-port", str(port))
    await Record.perform_async(note="counted")
    await wait_for_ledger(ledger, 1)
    body = ""

    async def scraped() -> bool:
        nonlocal body
        try:
            async with httpx.AsyncClient() as http:
                response = await http.get(f"http://127.0.0.1:{port}/metrics")
        except httpx.TransportError:
            return False  # not listening yet
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        body = response.text
        return 'natskiq_jobs_processed_total{queue="default",class="tests.Record"} 1' in body

    await until(scraped, timeout=20)
    assert "# TYPE natskiq_job_duration_seconds histogram" in body
    assert 'natskiq_queue_size{queue="default"} 0' in body


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty working directory without NATSKIQ_* variables."""
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("NATSKIQ_")]:
        monkeypatch.delenv(key)
    yield tmp_path


def _settings(*argv: str) -> natskiq.ops.launcher.Settings:
    return cli.worker_settings(cli._parser().parse_args(["worker", "--app", "json", *argv]))[0]


def test_metrics_port_from_flag_and_config_file(isolated: Path) -> None:
    """--metrics-port and `metrics_port` in natskiq.toml both set Settings.metrics_port; the flag wins."""
    (isolated / "natskiq.toml").write_text("metrics-port = 9464\n")
    assert _settings().metrics_port == 9464
    assert _settings("--metrics-port", "9100").metrics_port == 9100
    (isolated / "natskiq.toml").write_text('metrics_port = "9464"\n')
    with pytest.raises(natskiq.ConfigError, match="metrics port must be a whole number"):
        _settings()


# -- NATSKIQ_REPLICAS -----------------------------------------------------------


def test_replicas_from_environment(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$NATSKIQ_REPLICAS stands in for --replicas: the flag wins over it, and it over the config file."""
    (isolated / "natskiq.toml").write_text("replicas = 1\n")
    assert _settings().replicas == 1
    monkeypatch.setenv("NATSKIQ_REPLICAS", "3")
    assert _settings().replicas == 3
    assert _settings("--replicas", "5").replicas == 5
    monkeypatch.setenv("NATSKIQ_REPLICAS", "")
    assert _settings().replicas == 1


@pytest.mark.parametrize(("value", "message"), [("three", "must be 1, 3 or 5"), ("2", "replicas must be")])
def test_bad_replicas_in_environment_exit_2(
    isolated: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    value: str,
    message: str,
) -> None:
    """A $NATSKIQ_REPLICAS that is not 1, 3 or 5 exits 2 with a one-line error."""
    monkeypatch.setenv("NATSKIQ_REPLICAS", value)
    assert cli.main(["worker", "--app", "json", "--url", UNREACHABLE]) == 2
    err = capsys.readouterr().err
    assert err.startswith("natskiq: error: ") and message in err


# -- server --cluster -------------------------------------------------------------


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_run(count: int) -> int:
    """The first of ``count`` consecutive ports that are free now."""
    return free_ports(count, run=True)[0]


async def _has_replicas(url: str, stream: str, replicas: int, worker: subprocess.Popen[str]) -> bool:
    """Whether ``stream`` exists with ``replicas`` (fails at once if the worker has exited)."""
    assert worker.poll() is None, f"worker exited with {worker.returncode}"
    nc = await nats.connect(url.split(","))
    try:
        info = await nc.jetstream().stream_info(stream)
    except (NotFoundError, TimeoutError):  # not created yet, or a fresh cluster not answering yet
        return False
    finally:
        await nc.close()
    assert info.config.num_replicas == replicas
    return True


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_server_cluster_serves_until_sigterm(tmp_path: Path, namespace: str) -> None:
    """`natskiq server --cluster 3` runs three servers on PORT..PORT+2, on which a worker with
    NATSKIQ_REPLICAS=3 creates R3 streams, and takes them all down on SIGTERM."""
    port = free_run(3)
    ports = [port, port + 1, port + 2]
    url = ",".join(f"nats://127.0.0.1:{p}" for p in ports)
    cmd = [sys.executable, "-m", "natskiq", "server", "--cluster", "3", "--port", str(port)]
    server = subprocess.Popen([*cmd, "--store", str(tmp_path / "store")], stdout=subprocess.PIPE, text=True)
    env = _env(NATSKIQ_URL=url, NATSKIQ_NAMESPACE=namespace, NATSKIQ_REPLICAS="3")
    worker: subprocess.Popen[str] | None = None
    with (tmp_path / "worker.log").open("w") as log:
        try:
            assert server.stdout is not None
            assert f" at {url} " in server.stdout.readline()
            assert all(port_open(p) for p in ports)
            stores = sorted(p.name for p in (tmp_path / "store").iterdir() if p.is_dir())
            assert stores == ["nats-1", "nats-2", "nats-3"]
            worker = subprocess.Popen(
                [sys.executable, "-m", "natskiq", "worker", "--app", "tests.sample_workers"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            stream = Names(namespace).queue_stream("default")
            deadline = time.monotonic() + 60
            while not anyio.run(_has_replicas, url, stream, 3, worker):
                assert time.monotonic() < deadline, "no R3 stream within 60 s"
                time.sleep(0.2)
            assert _stop(worker) == 0, (tmp_path / "worker.log").read_text()
            assert _stop(server) == 0
            assert not any(port_open(p) for p in ports)
        finally:
            for proc in (worker, server):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if server.stdout is not None:
                server.stdout.close()


def test_server_cluster_needs_three(tmp_path: Path) -> None:
    """`natskiq server --cluster 2` exits 2 without starting anything."""
    result = subprocess.run(
        [sys.executable, "-m", "natskiq", "server", "--cluster", "2", "--store", str(tmp_path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--cluster needs at least 3 servers" in result.stderr
