"""Run the atheris target fuzz/fuzz_imap_server.py for ~5 seconds: it must exit 0 (no
exception other than RemoteProtocolError, whole and byte-by-byte feeds agree)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TARGET = REPO / "fuzz" / "fuzz_imap_server.py"
SEEDS = REPO / "fuzz" / "seeds" / "imap_server"


def test_fuzz_imap_server_smoke(tmp_path: Path) -> None:
    try:
        import atheris  # noqa: F401
    except ImportError:
        pytest.skip("atheris not installed")
    corpus = tmp_path / "corpus"
    shutil.copytree(SEEDS, corpus)     # libFuzzer writes new inputs into its corpus dir
    r = subprocess.run(
        [sys.executable, str(TARGET), "-max_total_time=5", "-timeout=10",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "Done" in r.stderr
