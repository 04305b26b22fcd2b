"""A release installs anywhere: ``python -m build`` makes an sdist and a
wheel, and the wheel, installed into a clean virtualenv (no checkout on the
path), runs ``natskiq --version``, ``natskiq demo`` and a worker."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import natskiq

from .conftest import until

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("release")]  # one build per run

ROOT = Path(__file__).resolve().parent.parent

APP = """
import os
import natskiq

class Touch(natskiq.Worker, name="release.Touch"):
    async def perform(self, path: str) -> None:
        with open(path, "w") as f:
            f.write(natskiq.__version__)
"""


class Touch(natskiq.Worker, name="release.Touch"):
    """The job APP defines, as the producer sees it (only enqueued here)."""

    async def perform(self, path: str) -> None:
        raise AssertionError("runs in the installed worker only")


def _clean_env() -> dict[str, str]:
    """The environment without anything that would put the checkout on the path."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("NATSKIQ_")
    }


def _run(*cmd: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{cmd}: {result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the dist directory, the clean venv's bin directory with the wheel installed)."""
    tmp = tmp_path_factory.mktemp("release")
    dist = tmp / "dist"
    _run(sys.executable, "-m", "build", "--outdir", dist, ROOT, cwd=tmp)
    (wheel,) = dist.glob("natskiq-*.whl")
    _run(sys.executable, "-m", "venv", tmp / "venv", cwd=tmp)
    bin_dir = tmp / "venv" / "bin"
    _run(bin_dir / "pip", "install", "-q", "--disable-pip-version-check", f"{wheel}[server]", cwd=tmp)
    return dist, bin_dir


def test_the_sdist_and_the_wheel_hold_what_a_user_needs(installed: tuple[Path, Path]) -> None:
    dist, _ = installed
    version = natskiq.__version__
    (wheel,) = dist.glob(f"natskiq-{version}-py3-none-any.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("natskiq/py.typed", "natskiq/web/static/natskiq.js", "natskiq/web/static/natskiq.css"):
        assert name in names
    metadata = zipfile.ZipFile(wheel).read(f"natskiq-{version}.dist-info/METADATA").decode()
    assert f"Version: {version}" in metadata and "Classifier: Typing :: Typed" in metadata
    (sdist,) = dist.glob(f"natskiq-{version}.tar.gz")
    members = {m.split("/", 1)[-1] for m in tarfile.open(sdist).getnames()}
    assert {"LICENSE", "README.md", "pyproject.toml", "src/natskiq/py.typed"} <= members


def test_the_installed_wheel_runs_without_the_checkout(installed: tuple[Path, Path], tmp_path: Path) -> None:
    _, bin_dir = installed
    python = bin_dir / "python"
    where = _run(python, "-c", "import natskiq; print(natskiq.__file__)", cwd=tmp_path).stdout
    assert str(ROOT) not in where and "site-packages" in where
    assert (
        _run(bin_dir / "natskiq", "--version", cwd=tmp_path).stdout.strip()
        == f"natskiq {natskiq.__version__}"
    )
    demo = _run(bin_dir / "natskiq", "demo", cwd=tmp_path, timeout=120)
    assert "natskiq demo: all jobs ran" in demo.stdout + demo.stderr


def _start_worker(bin_dir: Path, cwd: Path, url: str, namespace: str) -> subprocess.Popen[bytes]:
    cmd = [bin_dir / "natskiq", "worker", "--app", "release_app.py", "--url", url, "--namespace", namespace]
    with open(cwd / "worker.log", "wb") as log:  # the child keeps its own copy of the file
        return subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=_clean_env(), stdout=log, stderr=log)


async def test_a_worker_from_the_installed_wheel_runs_a_job(
    installed: tuple[Path, Path], tmp_path: Path, nats_url: str, namespace: str
) -> None:
    _, bin_dir = installed
    (tmp_path / "release_app.py").write_text(APP)
    marker = tmp_path / "ran.txt"
    worker = _start_worker(bin_dir, tmp_path, nats_url, namespace)
    try:
        async with natskiq.connect(nats_url, namespace=namespace) as client:
            await Touch.set(client=client).perform_async(str(marker))
            await until(marker.exists, timeout=30)
            assert marker.read_text() == natskiq.__version__
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text(errors="replace")[-2000:]
