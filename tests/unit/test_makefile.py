"""The Makefile's promises (README, top): `make run` installs only the runtime, and nothing when
nothing changed; a .venv made by a Python older than 3.11 is named with a one-line fix.

Each test runs the real Makefile in a copy of the project's build files, with a stand-in
``.venv`` whose ``python`` and ``patterd`` only write down how they were called.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAKE = """#!/bin/sh
echo "$(basename "$0") $*" >> "$FAKE_LOG"
case "$1" in
  -V) echo "Python $FAKE_VERSION" ;;
  -c) [ "$FAKE_VERSION" = "3.10.12" ] && exit 1 ;;
esac
exit 0
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in ("Makefile", "pyproject.toml", "deploy/scripts/system-deps.sh"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path

# The end-of-turn model's wheel, installed alone after the project (see the Makefile).
TURN_WHEEL = "python -m pip install --quiet --no-deps pipecat-ai>=1.14,<2"


def fake_venv(project: Path, name: str = ".venv") -> Path:
    bin_dir = project / name / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("python", "patterd"):
        (bin_dir / tool).write_text(FAKE)
        (bin_dir / tool).chmod(0o755)
    return bin_dir


def make(project: Path, *args: str, version: str = "3.12.1"
         ) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    log = project / "calls.log"
    log.write_text("")
    out = subprocess.run(["make", "--no-print-directory", "-C", str(project), *args],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "FAKE_LOG": str(log), "FAKE_VERSION": version})
    return out, log.read_text().splitlines()


def pip_runs(calls: list[str]) -> list[str]:
    return [c for c in calls if " -m pip install" in c]


def test_run_installs_the_runtime_only_and_then_nothing_until_pyproject_changes(
        project: Path) -> None:
    fake_venv(project)
    out, calls = make(project, "run")
    assert out.returncode == 0, out.stderr
    assert pip_runs(calls) == ["python -m pip install --quiet -e .", TURN_WHEEL]     # no [test]
    assert calls[-1] == "patterd --config config/patter.yaml"
    out, calls = make(project, "run")
    assert out.returncode == 0, out.stderr
    assert pip_runs(calls) == [] and calls[-1] == "patterd --config config/patter.yaml"
    later = time.time() + 5
    os.utime(project / "pyproject.toml", (later, later))               # a dependency changed
    _, calls = make(project, "run")
    assert pip_runs(calls) == ["python -m pip install --quiet -e .", TURN_WHEEL]


def test_the_tests_install_their_extras_and_those_cover_run(project: Path) -> None:
    fake_venv(project)
    out = subprocess.run(["make", "-n", "-C", str(project), "install", "EXTRAS=test,llm-local"],
                         capture_output=True, text=True, timeout=60)
    assert "-e '.[test,llm-local]'" in out.stdout
    out, calls = make(project, "install", "EXTRAS=test,llm-local")
    assert pip_runs(calls) == ["python -m pip install --quiet -e .[test,llm-local]", TURN_WHEEL]
    _, calls = make(project, "run")             # a superset is installed: nothing to do
    assert pip_runs(calls) == []


def test_a_venv_made_by_an_old_python_gets_a_one_line_fix(project: Path) -> None:
    fake_venv(project)
    out, calls = make(project, "run", version="3.10.12")
    assert out.returncode != 0 and pip_runs(calls) == [] and "patterd --config" not in calls
    (line,) = [ln for ln in out.stderr.splitlines() if ln.startswith("patterd")]
    assert line == ("patterd needs Python 3.11 or newer; .venv was made by Python 3.10.12. "
                    "Fix: rm -rf .venv && make run PYTHON=python3.11")


def test_an_old_python_is_refused_before_it_makes_a_venv(project: Path) -> None:
    old = fake_venv(project, "old-python") / "python"
    out, calls = make(project, "run", f"PYTHON={old}", version="3.10.12")
    assert out.returncode != 0
    assert not (project / ".venv").exists()
    (line,) = [ln for ln in out.stderr.splitlines() if ln.startswith("patterd")]
    assert line == (f"patterd needs Python 3.11 or newer; {old} is Python 3.10.12. "
                    "Fix: make run PYTHON=python3.11 (or python3.12, …)")
