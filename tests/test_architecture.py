"""The architecture contracts in pyproject.toml ([tool.importlinter]) hold
(no import cycles among them), cover every module they claim to, and do
break when an import crosses one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "natskiq"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def contracts() -> list[dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found: list[dict[str, object]] = config["tool"]["importlinter"]["contracts"]
    return found


def lint_imports(src: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports with the project's contracts, natskiq imported from ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_every_contract_is_kept() -> None:
    result = lint_imports(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(contracts())} kept, 0 broken" in result.stdout


def test_the_cli_contract_lists_every_module() -> None:
    """A module added later is covered: the list must name every top-level
    module and subpackage of natskiq but the CLI and ``__main__``."""
    (cli,) = [c for c in contracts() if c.get("forbidden_modules") == ["natskiq.cli"]]
    on_disk = {"natskiq"}
    for path in SRC.iterdir():
        if path.suffix == ".py" and path.stem not in ("__init__", "__main__", "cli"):
            on_disk.add(f"natskiq.{path.stem}")
        elif path.is_dir() and (path / "__init__.py").exists() and path.name != "cli":
            on_disk.add(f"natskiq.{path.name}")
    assert set(cli["source_modules"]) == on_disk  # type: ignore[arg-type]


def test_an_import_across_a_contract_breaks_it(tmp_path: Path) -> None:
    """The envelope importing the client (a copy of the sources) fails the check."""
    copy = tmp_path / "src"
    shutil.copytree(SRC, copy / "natskiq", ignore=shutil.ignore_patterns("__pycache__"))
    job = copy / "natskiq" / "job.py"
    job.write_text(job.read_text() + "\nfrom natskiq.enqueue import client as _client  # noqa\n")
    result = lint_imports(copy)
    assert result.returncode != 0
    # The envelope's contract, the layers (the envelope sits below the client) and the
    # no-cycles one (the client imports the envelope).
    assert "3 broken" in result.stdout and "natskiq.job -> natskiq.enqueue.client" in result.stdout
