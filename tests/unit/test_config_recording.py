"""``recording.local_dir``: validated at load (without creating anything), shown by check."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from patterd.config import ConfigError, build_config
from patterd.config.render import render
from tests.conftest import twilio_raw


def problems_of(local_dir: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config(twilio_raw(recording={"local_dir": local_dir}), env={})
    return info.value.problems


def test_local_dir_is_off_by_default_and_kept_when_set(tmp_path: Path) -> None:
    assert build_config(twilio_raw(), env={}).recording.local_dir == ""
    target = tmp_path / "calls" / "2024"       # missing: made at the first call
    cfg = build_config(twilio_raw(recording={"local_dir": str(target)}), env={})
    assert cfg.recording.local_dir == str(target) and not cfg.recording.enabled
    assert not target.exists() and not (tmp_path / "calls").exists()   # no side effects
    shown = yaml.safe_load(render(cfg))["recording"]
    assert shown == {"enabled": False, "channels": "dual", "local_dir": str(target)}


def test_local_dir_below_a_file_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    problems = problems_of(str(tmp_path / "afile" / "recordings"))
    assert len(problems) == 1
    assert problems[0].startswith("recording.local_dir: cannot create ")
    assert "is not a directory" in problems[0]


def test_local_dir_that_is_a_file_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    assert problems_of(str(tmp_path / "afile")) == [
        f"recording.local_dir: expected a directory, {str(tmp_path / 'afile')!r} is a file"]


def _as_nobody(fn: Callable[[], list[str]]) -> list[str]:
    """``fn()`` in a forked child running as ``nobody`` (root may write anywhere)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # pragma: no cover - the child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(w, json.dumps(fn()).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as pipe:
        out = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(out)


def test_local_dir_without_write_permission_names_the_key() -> None:
    base = Path(tempfile.mkdtemp(prefix="patterd-rec-"))     # traversable by everyone
    base.chmod(0o755)
    locked = base / "locked"
    locked.mkdir(mode=0o555)
    try:
        target = str(locked / "sub")
        problems = _as_nobody(lambda: problems_of(target)) if os.geteuid() == 0 \
            else problems_of(target)
    finally:
        locked.chmod(0o755)
        shutil.rmtree(base)
    assert problems[0].startswith("recording.local_dir: cannot create"), problems
    assert "permission denied" in problems[0]


def test_local_dir_must_be_a_string() -> None:
    assert problems_of(["a"]) == ["recording.local_dir: expected a string, got a list"]


def test_recording_keys_still_reject_typos(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(twilio_raw(recording={"local_dirs": str(tmp_path)}), env={})
    assert info.value.problems == [
        "recording.local_dirs: unknown key (did you mean 'local_dir'?)"]
