"""The set-up promises: console script, README commands, CI, the container image recipe."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_declares_package_script_and_stack() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["name"] == "patterd" and meta["requires-python"] == ">=3.11"
    assert meta["scripts"]["patterd"] == "patterd.cli:main"
    deps = " ".join(meta["dependencies"])
    for name in ("aiohttp", "pyyaml", "pynacl", "structlog", "uvloop", "prometheus-client"):
        assert name in deps


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", readme, re.S)
    assert block is not None and readme.index("```sh") < 40
    lines = [ln.split("#")[0].strip() for ln in block.group(1).splitlines()]
    assert lines == ["make run", "make test"]
    ci = (ROOT / ".ci/run").read_text()
    assert "exec make test" in ci and (ROOT / ".ci/run").stat().st_mode & 0o111


def test_dockerfile_runs_non_root_with_healthcheck_and_etc_config() -> None:
    text = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*?/healthz", text, re.M | re.S)
    assert "/etc/patterd/patter.yaml" in re.findall(r"^CMD .*", text, re.M)[-1]
    assert "PATTERD_HOST=0.0.0.0" in text


def test_shipped_config_listens_on_all_interfaces_in_the_container() -> None:
    out = subprocess.run([sys.executable, "-m", "patterd", "check", "--config",
                          "config/patter.yaml"], cwd=ROOT, capture_output=True, text=True,
                         env={"PATTERD_HOST": "0.0.0.0", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["server"]["host"] == "0.0.0.0"
