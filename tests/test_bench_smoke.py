"""The benchmark harness must not rot: `bench/run.py --smoke` runs end to end.

Runs the smoke mode (seconds, one repetition, tiny N) against every target, with at least
direct, haproxy and trio-mailproxy required to produce results. No figure is asserted:
only that each target started, logged in, relayed FETCH/APPEND, held its idle sessions
and answered NOOP on all of them, that results were written, and that nothing the bench
started is left running.

Missing binaries are installed first by bench/install.sh (when root); a skip names the
binary only when it is not installable here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.bench import processes_with, which

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
IDLE_N = 20


def _missing() -> list[str]:
    return [b for b in ("gcc", "dovecot", "haproxy", "nginx") if which(b) is None]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if _missing() and os.geteuid() == 0:
        subprocess.run(["bash", str(BENCH / "install.sh")], timeout=900,
                       stdout=subprocess.DEVNULL)
    missing = [b for b in _missing() if b in ("gcc", "dovecot", "haproxy")]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed and not installable here "
                    "(run bash bench/install.sh as root)")
    out = tmp_path_factory.mktemp("bench-smoke")
    before = set(processes_with("/tmp/bench-"))
    r = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--smoke", "--no-install",
         "--targets", "direct,haproxy,dovecot,nginx,trio,compiled,floor,loopfloor,libloop",
         "--idle", str(IDLE_N), "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=str(REPO),
    )
    assert r.returncode == 0, f"bench --smoke failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    jsons = sorted(out.glob("smoke-*.json"))
    mds = sorted(out.glob("smoke-*.md"))
    assert len(jsons) == 1 and len(mds) == 1, list(out.iterdir())
    assert not (out / "latest.md").exists(), "smoke mode must not replace latest.md"
    return {"report": json.loads(jsons[0].read_text()), "md": mds[0].read_text(),
            "stdout": r.stdout, "before": before}


def _required_targets() -> list[str]:
    req = ["direct", "haproxy", "trio", "compiled", "floor", "loopfloor", "libloop"]
    if which("nginx") and os.path.exists("/usr/lib/nginx/modules/ngx_mail_module.so"):
        req.append("nginx")
    req.append("dovecot")
    return req


def test_every_target_started(smoke: dict) -> None:
    status = smoke["report"]["targets"]
    for name in _required_targets():
        st = status.get(name, {})
        assert st.get("available"), f"target {name} did not start: {st.get('error')}"


def test_every_target_measured(smoke: dict) -> None:
    rep = smoke["report"]["run"]["reps"][0]["results"]
    for name in _required_targets():
        assert name in rep, f"target {name} was not measured: {sorted(rep)}"
        res = rep[name]
        for key in ("imap_c1", "imap_c50", "fetch", "append"):
            assert key in res and "error" not in res[key], (name, key, res.get(key))
        for key in ("imap_c1", "imap_c50"):
            assert res[key]["logins_total"] > 0 and res[key]["errors"] == 0, (name, res[key])
        # the c=1 cycle split into greeting, login and logout: each step took time, and
        # the first two together fit in the latency the same cycles gave
        greet, login, logout = res["imap_c1"]["phase_p50_us"]
        assert greet > 0 and login > 0 and logout > 0, (name, res["imap_c1"])
        assert greet + login <= res["imap_c1"]["max_ms"] * 1000, (name, res["imap_c1"])
        if smoke["report"]["targets"][name].get("pop3"):
            assert res["pop3_c50"]["logins_total"] > 0, (name, res["pop3_c50"])
        assert res["fetch"]["bytes"] > 0 and res["append"]["bytes"] > 0
        if name != "direct":
            idle = res[f"idle_{IDLE_N}"]
            assert "error" not in idle, (name, idle)
            assert idle["ready"] == IDLE_N and idle["noop_ok"] == IDLE_N, (name, idle)
            assert res["imap_c50"]["target_cpu_us_per_login"] is not None


def test_report_written(smoke: dict) -> None:
    md = smoke["md"]
    assert "| IMAP logins/s, c=1 |" in md
    assert "| c=1 phase p50: LOGIN to its OK |" in md
    # both builds of the daemon, each in the table and measured against issue 4's goals
    assert "| trio-mailproxy | trio-mailproxy, compiled |" in md
    assert "| goal | trio-mailproxy | trio-mailproxy, compiled | reference | met |" in md
    assert "Machine:" in md
    summary = smoke["report"]["summary"]
    assert "imap_c1_lps" in summary and "direct" in summary["imap_c1_lps"]["targets"]


def test_nothing_left_running(smoke: dict) -> None:
    # every server of the bench lives in a /tmp/bench-<name>-XXXX directory
    left = [p for p in processes_with("/tmp/bench-")
            if p not in smoke["before"] and "pytest" not in p]
    assert not left, f"bench left processes running: {left}"
