"""Run the atheris targets for a few seconds each (fuzz/fuzz_imap_server.py ~5 s,
fuzz/fuzz_imap_client.py ~3 s): they must exit 0 (no exception other than
RemoteProtocolError from the server role, none at all from the client role; whole and
byte-by-byte feeds agree)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name, seconds", [("imap_server", 5), ("imap_client", 3)])
def test_fuzz_smoke(tmp_path: Path, name: str, seconds: int) -> None:
    try:
        import atheris  # noqa: F401
    except ImportError:
        pytest.skip("atheris not installed")
    corpus = tmp_path / "corpus"
    # libFuzzer writes new inputs into its corpus dir: work on a copy of the seeds
    shutil.copytree(REPO / "fuzz" / "seeds" / name, corpus)
    r = subprocess.run(
        [sys.executable, str(REPO / "fuzz" / f"fuzz_{name}.py"), f"-max_total_time={seconds}",
         "-timeout=10",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "Done" in r.stderr
