"""bench/compare.py must not rot: each of its modes runs end to end on two versions.

Compares the committed HEAD (exported with git archive) with the working tree (a
directory), with the shortest settings; without git history, a copy of src/ takes HEAD's
place. No figure is asserted beyond what shows that every version really ran: a ratio row
per version, instruction and opcode counts in the range a login can cost, and nothing the
tool started left running.

Missing binaries are installed first by bench/install.sh (when root); a skip names the
binary only when it is not installable here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.bench import processes_with, which

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
NEEDED = ("gcc", "dovecot", "valgrind", "callgrind_control")


def _bench_processes() -> set[str]:
    return {p for p in processes_with("/tmp/bench-") if "pytest" not in p}


@pytest.fixture(scope="module", autouse=True)
def installed() -> None:
    if any(which(b) is None for b in NEEDED) and os.geteuid() == 0:
        subprocess.run(["bash", str(BENCH / "install.sh")], timeout=900,
                       stdout=subprocess.DEVNULL)
    missing = [b for b in NEEDED if which(b) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed and not installable here "
                    "(run bash bench/install.sh as root)")


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """HEAD (exported with git archive) and the working tree; a checkout without git
    history compares a copy of src/ with the working tree instead."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", "HEAD"],
                          capture_output=True)
    if head.returncode == 0:
        return ["HEAD", str(REPO)]
    copy = tmp_path_factory.mktemp("compare-copy")
    shutil.copytree(REPO / "src", copy / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return [str(copy), str(REPO)]


def _compare(versions: list[str], *args: str, timeout: float) -> str:
    before = _bench_processes()
    r = subprocess.run([sys.executable, str(BENCH / "compare.py"), *args, *versions],
                       capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
    assert r.returncode == 0, f"compare.py failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    left = _bench_processes() - before
    assert not left, f"compare.py left processes running: {left}"
    return r.stdout


def _rows(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) > 1 and not cells[0] == "version":
            rows[cells[0]] = cells[1:]
    return rows


def test_logins_compares_a_revision_and_a_directory_side_by_side(versions: list[str]) -> None:
    out = _compare(versions, "--reps", "1", "--duration", "0.3", "--warmup", "0.1",
                   "--concurrency", "1", timeout=600)
    rows = _rows(out)
    assert set(rows) == {"direct", *versions}, out
    direct_p99 = float(rows.pop("direct")[1].split()[0])
    for name, (ratio, p99, cpu) in rows.items():
        # "0.541 (0.541–0.541)": a login through the proxy is slower than direct, but not
        # ten times slower
        assert 0.1 < float(ratio.split()[0]) < 1.5, (name, ratio)
        assert re.fullmatch(r"\d+\.\d{3} \(\d+\.\d{3}–\d+\.\d{3}\) ms", p99), (name, p99)
        assert 0 < direct_p99 and 0 < float(p99.split()[0]) < 100, (name, p99)
        assert re.fullmatch(r"\d+ \(\d+–\d+\) µs", cpu), (name, cpu)


def test_instructions_counts_a_login_under_callgrind(versions: list[str]) -> None:
    out = _compare(versions, "--instructions", "5", timeout=900)
    rows = _rows(out)
    assert set(rows) == set(versions), out
    for name, (count,) in rows.items():
        # a login costs about 1,400 k instructions; 200 k would be less than the loop
        # floor (bench/README.md), 20,000 k a daemon that did far more than log in
        k = int(count.removesuffix(" k").replace(",", ""))
        assert 200 < k < 20_000, (name, count)


def test_opcodes_counts_a_login_by_part_and_function(versions: list[str]) -> None:
    out = _compare(versions, "--opcodes", "5", timeout=900)
    rows = _rows(out)
    assert set(rows) == set(versions), out
    for name, (count, trio_share) in rows.items():
        # a login is about 16,000 opcodes (bench/README.md); a tenth of that could not
        # have parsed the login, a hundred times that did far more than log in
        opcodes = int(count.replace(",", ""))
        assert 1_600 < opcodes < 1_600_000, (name, count)
        # Trio runs the sessions but does not do all of the work, nor none of it
        assert 5 < int(trio_share.removesuffix("%")) < 95, (name, trio_share)
        # the largest parts name the daemon's own modules, as the tracer saw them run
        by_part = next(line for line in out.splitlines()
                       if line.startswith(f"- {name}, by part: "))
        assert "mailproxy.protocols.imap" in by_part, by_part


def test_wakeups_counts_the_workers_waits_per_login(versions: list[str]) -> None:
    out = _compare(versions, "--wakeups", "20", timeout=600)
    rows = _rows(out)
    assert set(rows) == set(versions), out
    for name, (count,) in rows.items():
        # a login waits for the client's command, the backend's banner and its login
        # reply, and the relay for the logout: at least about 2 waits (a wait can serve
        # two steps at once), and a daemon sleeping 50 times per login is broken
        assert 1.0 < float(count) < 50, (name, count)
