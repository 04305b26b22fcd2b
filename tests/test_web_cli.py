"""`natskiq web` serves the dashboard from the command line."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import pytest

from natskiq.ops.server import free_ports

from .conftest import ROOT

pytest.importorskip("starlette", reason="the web extra is not installed")


def test_web_command_serves_the_dashboard(nats_url: str, namespace: str) -> None:
    """`natskiq web --read-only` answers on its port, and stops on SIGINT."""
    [port] = free_ports(1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "natskiq", "web", "--url", nats_url, "--namespace", namespace,
         "--port", str(port), "--read-only"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and "natskiq" in page.text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) in (0, 130)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_web_command_reports_a_bad_auth_setting(nats_url: str) -> None:
    """A malformed --auth exits 2 with a clear message."""
    result = subprocess.run(
        [sys.executable, "-m", "natskiq", "web", "--url", nats_url, "--auth", "nonsense", "--port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2 and "auth" in result.stderr.lower()
