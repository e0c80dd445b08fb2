"""The README and the code's docstrings point at what a clone has: files that exist, the
configuration reference in the repository, and the facts a newcomer needs before `make test`."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def test_every_config_file_the_readme_runs_exists() -> None:
    paths = [m for block in shell_blocks(README) for m in re.findall(r"--config (\S+)", block)]
    assert paths, "the README runs patterd with a config"
    missing = [p for p in paths if p != "PATH" and not (ROOT / p).is_file()]
    assert missing == []


def test_nothing_points_outside_the_repository() -> None:
    texts = {"README.md": README}
    for path in [*(ROOT / "patterd").rglob("*.py"), *(ROOT / "docs").rglob("*.md")]:
        texts[str(path.relative_to(ROOT))] = path.read_text(encoding="utf-8")
    outside = [name for name, text in texts.items()
               if "../shared" in text or re.search(r"contract §\d", text)]
    assert outside == []
    assert "(docs/configuration.md)" in README


def test_the_readme_says_what_make_test_does_and_how_to_develop() -> None:
    top = README[:README.index("## ")]
    for fact in ("**enables and starts their services**", "PostgreSQL", "HAProxy", "Chromium",
                 "~340 MB", "minutes on 2 cores", "Python ≥ 3.11"):
        assert fact in top, fact
    assert "logging: {format: console}" in README
