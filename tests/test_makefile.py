"""`make app` binds 127.0.0.1 unless HOST opts in, and then warns (the app has no authentication)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _make_app(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`make app` with a stand-in streamlit that prints its arguments (nothing is installed)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("python", "streamlit"):
        (bin_dir / name).write_text('#!/bin/sh\necho "$@"\n')
        (bin_dir / name).chmod(0o755)
    stamp = tmp_path / "stamp"
    stamp.touch()
    newest = max((ROOT / name).stat().st_mtime for name in ("pyproject.toml", "Makefile")) + 1
    os.utime(stamp, (newest, newest))  # newer than what it depends on: nothing is installed
    return subprocess.run(["make", "-s", "-C", str(ROOT), "app", f"BIN={bin_dir}", f"STAMP={stamp}", *args],
                          capture_output=True, text=True, timeout=60, check=True)


def test_make_app_binds_localhost_by_default(tmp_path):
    run = _make_app(tmp_path)
    assert "--server.address 127.0.0.1 " in run.stdout and "WARNING" not in run.stderr


def test_make_app_on_every_interface_is_an_opt_in_with_a_warning(tmp_path):
    run = _make_app(tmp_path, "HOST=0.0.0.0")
    assert "--server.address 0.0.0.0 " in run.stdout
    assert "WARNING: serving on 0.0.0.0:8501 with no authentication" in run.stderr
