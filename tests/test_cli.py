"""`trio-mailproxy` as an operator runs it: exit codes, one-line errors, lookup output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = """\
[[listener]]
protocol = "imap"
bind = "127.0.0.1:10143"
tls = "none"

[[passdb]]
driver = "passwd-file"
args = "users"
"""


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailproxy.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "users").write_text(
        "alice:{PLAIN}alicepw::::::proxy=y host=10.0.0.7 port=1143 pass=backendsecret "
        "forward_dept=sales\n"
        "bob:{SHA256-CRYPT}$5$rounds=5000$WLmk1.I/ieN8/vKb$bvyeWgSoY1nmm3TcpbeA26fSU0gdeZL"
        "mzxJ7vRZ6Pw8::::::nologin=y reason=Moved\n")
    path = tmp_path / "proxy.toml"
    path.write_text(CONFIG)
    return path


def test_check_accepts_a_good_config(config: Path) -> None:
    r = run("check", "-c", str(config))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{config}: OK")


def test_check_reports_file_line_key_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(CONFIG + "\n[limits]\nlogin_timeout = -1\nbogus = 1\n")
    r = run("check", "-c", str(path))
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"{path}:11: limits.login_timeout: must be >= 0.001 seconds",
        f"{path}:12: limits.bogus: unknown key",
    ]
    assert "Traceback" not in r.stderr


def test_check_reports_a_missing_passwd_file(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(CONFIG)
    r = run("check", "-c", str(path))
    assert r.returncode == 1
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"{path}:6: passdb.args: ")
    assert "users" in line and "Traceback" not in r.stderr


def test_unknown_passdb_driver_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(CONFIG.replace('"passwd-file"', '"nis"'))
    r = run("check", "-c", str(path))
    assert r.returncode == 1
    assert r.stderr.startswith(f"{path}:7: passdb.driver: must be one of")


def test_lookup_succeeds_and_redacts_pass(config: Path) -> None:
    r = run("lookup", "-c", str(config), "alice", "--password", "alicepw")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "passdb: alice auth succeeded"
    assert lines[1] == "extra fields:"
    assert "  user=alice" in lines
    assert "  proxy=y" in lines and "  host=10.0.0.7" in lines and "  port=1143" in lines
    assert "  forward_dept=sales" in lines
    assert "backendsecret" not in r.stdout and "alicepw" not in r.stdout
    assert any(li.startswith("  pass=") for li in lines)


def test_lookup_wrong_password_exits_1(config: Path) -> None:
    r = run("lookup", "-c", str(config), "alice", "--password", "nope")
    assert r.returncode == 1
    assert r.stdout.splitlines()[0] == "passdb: alice auth failed"


def test_lookup_unknown_user_exits_1(config: Path) -> None:
    r = run("lookup", "-c", str(config), "mallory", "--password", "x")
    assert r.returncode == 1
    assert r.stdout.splitlines()[0] == "passdb: mallory auth failed"


def test_pw_makes_hashes_that_lookup_verifies(config: Path, tmp_path: Path) -> None:
    r = run("pw", "-s", "SHA512-CRYPT", "-p", "s3cret")
    assert r.returncode == 0, r.stderr
    hashed = r.stdout.strip()
    assert hashed.startswith("{SHA512-CRYPT}$6$")
    (tmp_path / "users").write_text(f"carol:{hashed}::::::proxy=y host=127.0.0.1\n")
    assert run("lookup", "-c", str(config), "carol", "--password", "s3cret").returncode == 0
    assert run("lookup", "-c", str(config), "carol", "--password", "other").returncode == 1


def test_pw_reads_the_password_from_stdin() -> None:
    r = run("pw", "-s", "PLAIN", stdin="fromstdin\n")
    assert r.returncode == 0 and r.stdout.strip() == "{PLAIN}fromstdin"


def test_pw_unknown_scheme_is_a_usage_error() -> None:
    r = run("pw", "-s", "ROT13", "-p", "x")
    assert r.returncode == 2 and "ROT13" in r.stderr and "Traceback" not in r.stderr


def test_usage_errors_exit_2_in_one_line() -> None:
    r = run("run")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "--config" in r.stderr
    r = run("frobnicate")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_run_with_a_bad_config_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text("[[listener]]\nbind = 'nowhere'\n")
    r = run("run", "-c", str(path))
    assert r.returncode == 1
    assert f"{path}:2: listener.bind: expected HOST:PORT" in r.stderr
    assert "Traceback" not in r.stderr


def _taken_port() -> "tuple[socket.socket, int]":
    import socket
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder, holder.getsockname()[1]


@pytest.mark.parametrize("workers", [1, 2])
def test_run_on_a_taken_port_is_one_line_naming_the_listener(
        tmp_path: Path, workers: int) -> None:
    holder, port = _taken_port()
    try:
        path = tmp_path / "proxy.toml"
        path.write_text(f"workers = {workers}\n"
                        + CONFIG.replace("127.0.0.1:10143", f"127.0.0.1:{port}"))
        (tmp_path / "users").write_text("alice:{PLAIN}pw\n")
        r = run("run", "-c", str(path))
    finally:
        holder.close()
    assert r.returncode == 1
    assert f"{path}:2: listener.bind: bind(127.0.0.1, {port}) failed: Address already in use" \
        in r.stderr.splitlines()
    assert "Traceback" not in r.stderr + r.stdout


def test_a_worker_that_cannot_bind_stops_the_daemon_instead_of_restarting(
        tmp_path: Path) -> None:
    # The parent's check passed, then the address was taken before the workers bound it:
    # the workers say why, once each, and the daemon exits 1 instead of restarting them.
    holder, port = _taken_port()
    try:
        path = tmp_path / "proxy.toml"
        path.write_text("workers = 2\n" + CONFIG.replace("127.0.0.1:10143", f"127.0.0.1:{port}"))
        (tmp_path / "users").write_text("alice:{PLAIN}pw\n")
        script = ("import sys, mailproxy.io.server as s; s.check_listeners = lambda c: None; "
                  "from mailproxy.cli import main; sys.exit(main())")
        r = subprocess.run([sys.executable, "-c", script, "run", "-c", str(path)],
                           capture_output=True, text=True, timeout=60)
    finally:
        holder.close()
    out = r.stdout + r.stderr
    assert r.returncode == 1
    assert f"listener.bind: bind(127.0.0.1, {port}) failed: Address already in use" in out
    assert "restarting" not in out and "Traceback" not in out
