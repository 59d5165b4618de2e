"""The servers the benchmark starts: a tuned Dovecot backend and the proxy targets.

Every server here is private: its own temporary directory and config, loopback addresses
and free ports, its own session/process group (``start_new_session``), and ``stop()``
ends the whole group (SIGTERM, then SIGKILL for whatever is left). Nothing touches
/etc/dovecot, /etc/nginx, /etc/haproxy or a packaged instance.

Independent of tests/support/dovecot.py on purpose: the bench needs settings the test
fixture does not carry (thousands of sessions, cheap logins, big messages), and must not
break when the fixture changes.
"""

from __future__ import annotations

import os
import pwd
import re
import grp
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

#: Where trio-mailproxy's code is imported from (PYTHONPATH). run.py points this at a
#: snapshot of src/ taken when the run starts, so that every restart of the daemon during
#: one run measures the same code even while the working tree is being edited.
TRIO_SRC = REPO_ROOT / "src"

#: The same code's compiled build (setup.py, MAILPROXY_COMPILE=1), unpacked by run.py
#: (scripts/build_compiled.py) when the "compiled" target is asked for; None until then.
TRIO_COMPILED: Path | None = None

#: Every server started and not yet stopped (run.py stops them all in a finally block).
RUNNING: list["Server"] = []

NUM_USERS = 1000
USER_PREFIX = "user"
PASSWORD = "pass"
FETCH_USER = "fetchuser"     # INBOX: a 1 MiB and a 20 MiB message
APPEND_USER = "appenduser"   # APPEND target; emptied after each APPEND test

MIB = 1024 * 1024


class ServerError(RuntimeError):
    pass


# ----------------------------------------------------------------------- helpers
def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def assert_loopback(host: str) -> None:
    if not host.startswith("127."):
        raise ValueError(f"{host}: the bench only uses 127.0.0.0/8")


def wait_greeting(host: str, port: int, prefix: bytes, timeout: float, proc=None) -> bytes:
    """Connect until a line starting with ``prefix`` arrives (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"exited with {proc.returncode} before greeting on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=1.0) as s:
                buf = b""
                while b"\n" not in buf and len(buf) < 4096:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                if buf.startswith(prefix):
                    return buf.split(b"\r\n", 1)[0]
                last = buf[:100]
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise ServerError(f"no greeting from {host}:{port} within {timeout:g}s (last: {last!r})")


def make_tmpdir(prefix: str) -> Path:
    # Short path (unix sockets are limited to 108 bytes) that Dovecot's unprivileged
    # processes can traverse.
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    d.chmod(0o755)
    return d


def which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return None


def proc_stat_fields(pid: int | str) -> list[bytes] | None:
    """/proc/<pid>/stat from field 3 on (None if the process is gone). comm (field 2)
    may contain spaces and parentheses, so the split starts after the last ')'."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].split()


def session_pids(sid: int) -> list[int]:
    """Every process whose session id is ``sid`` (the servers run in their own session)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        rest = proc_stat_fields(entry)
        if rest is not None and int(rest[3]) == sid:   # field 6 = session
            pids.append(int(entry))
    return pids


# ------------------------------------------------------------------------ Server
class Server:
    """A process group we started; ``pids()`` lists its processes."""

    name = "server"

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.dir: Path | None = None
        self.keep_dir = False

    def _spawn(self, argv: list[str], log_name: str, env: dict | None = None) -> None:
        assert self.dir is not None
        out = open(self.dir / log_name, "ab")
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=str(self.dir), env=env,
            )
        finally:
            out.close()
        RUNNING.append(self)

    def pids(self) -> list[int]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        return session_pids(self.proc.pid)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, label: str, greetings: list[tuple[int, bytes]], timeout: float,
                   *logs: str) -> None:
        """Wait for each (port, greeting prefix); on failure stop and raise ServerError
        naming `label`, with the tails of `logs`."""
        try:
            for port, prefix in greetings:
                wait_greeting(self.host, port, prefix, timeout, self.proc)
        except ServerError as e:
            tail = "".join(self.log_tail(name) for name in logs)
            self.stop()
            raise ServerError(f"{label}: {e}\n{tail}") from None

    def log_tail(self, name: str, lines: int = 30) -> str:
        if self.dir is None:
            return ""
        p = self.dir / name
        if not p.exists():
            return ""
        return "\n".join(p.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        proc = self.proc
        if proc is not None:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    # watch for the exit without reaping: the group id stays ours
                    if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                        break
                    time.sleep(0.02)
            # whatever is left of the group (children of a master that already exited)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            self.proc = None
        if self in RUNNING:
            RUNNING.remove(self)
        if self.dir is not None and not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def stop_all() -> None:
    for s in list(reversed(RUNNING)):
        try:
            s.stop()
        except Exception as e:  # keep stopping the others
            print(f"bench: stopping {s.name} failed: {e}")


# ----------------------------------------------------------------------- Dovecot
def _dovecot_accounts() -> tuple[str, str, int, int, list[str]]:
    """(internal user, login user, mail uid, mail gid, extra config lines)."""
    if os.geteuid() == 0:
        for account in ("dovecot", "dovenull"):
            pwd.getpwnam(account)  # KeyError: dovecot-core not installed
        nobody = pwd.getpwnam("nobody")
        return "dovecot", "dovenull", nobody.pw_uid, nobody.pw_gid, []
    me = pwd.getpwuid(os.getuid())
    extra = [f"default_internal_group = {grp.getgrgid(os.getgid()).gr_name}"]
    for svc in ("anvil", "ipc", "old-stats", "aggregator", "imap-login", "pop3-login",
                "imap-urlauth-login"):
        extra.append(f"service {svc} {{\n  chroot =\n}}")
    return me.pw_name, me.pw_name, me.pw_uid, os.getgid(), extra


class Dovecot(Server):
    """Dovecot 2.3, as the mail backend or as a pure login proxy (``proxy_to``)."""

    def __init__(self, *, name: str, host: str, cores: int,
                 proxy_to: tuple[str, int, int] | None = None) -> None:
        super().__init__()
        assert_loopback(host)
        self.name = name
        self.host = host
        self.cores = cores
        self.proxy_to = proxy_to
        self.imap_port = 0
        self.pop3_port = 0

    # -- files
    def _write_backend_mail(self, uid: int, gid: int) -> None:
        assert self.dir is not None
        mail = self.dir / "mail"
        users = [f"{USER_PREFIX}{i:04d}" for i in range(NUM_USERS)] + [FETCH_USER, APPEND_USER]
        lines = [f"{u}:{{PLAIN}}{PASSWORD}::::::\n" for u in users]
        (self.dir / "users").write_text("".join(lines))
        (self.dir / "users").chmod(0o644)
        for u in users:
            for sub in ("cur", "new", "tmp"):
                (mail / u / sub).mkdir(parents=True, exist_ok=True)
        # the two big messages, already "seen" in cur/
        now = int(time.time())
        for n, size in ((1, MIB), (2, 20 * MIB)):
            name = f"{now}.M{n}P{os.getpid()}.bench,S={size}:2,S"
            (mail / FETCH_USER / "cur" / name).write_bytes(_message(size, n))
        if os.geteuid() == 0:
            for root, dirs, files in os.walk(mail):
                os.chown(root, uid, gid)
                for f in files:
                    os.chown(os.path.join(root, f), uid, gid)

    def _config(self, internal: str, login: str, uid: int, gid: int, extra: list[str]) -> str:
        d = self.dir
        assert d is not None
        big = 20000
        out = [
            "# generated by bench/servers.py",
            f"base_dir = {d}/run",
            f"state_dir = {d}/state",
            f"log_path = {d}/dovecot.log",
            f"instance_name = bench-{self.name}-{os.getpid()}",
            "protocols = imap pop3",
            f"listen = {self.host}",
            f"default_internal_user = {internal}",
            f"default_login_user = {login}",
            "first_valid_uid = 1",
            "first_valid_gid = 1",
            "ssl = no",
            "disable_plaintext_auth = no",
            "auth_mechanisms = plain login",
            "shutdown_clients = yes",
            "default_vsz_limit = 2G",
            f"default_client_limit = {big}",
            f"service anvil {{\n  client_limit = {big}\n}}",
            f"service auth {{\n  client_limit = {big}\n}}",
            "service stats {\n  client_limit = 20000\n}",
            *extra,
        ]
        login_tuning = (
            "  service_count = 0\n"
            f"  client_limit = {big // max(1, self.cores) if self.proxy_to else big}\n"
            f"  process_min_avail = {self.cores}\n"
            "  vsz_limit = 2G\n"
        )
        out += [
            "service imap-login {",
            f"  inet_listener imap {{\n    address = {self.host}\n    port = {self.imap_port}\n  }}",
            "  inet_listener imaps {\n    port = 0\n  }",
            login_tuning + "}",
            "service pop3-login {",
            f"  inet_listener pop3 {{\n    address = {self.host}\n    port = {self.pop3_port}\n  }}",
            "  inet_listener pop3s {\n    port = 0\n  }",
            login_tuning + "}",
            "service imap-urlauth-login {\n  unix_listener imap-urlauth {\n  }\n}",
        ]
        if self.proxy_to is None:
            out += [
                f"mail_location = maildir:{d}/mail/%u",
                "mail_fsync = never",
                "passdb {",
                "  driver = passwd-file",
                f"  args = {d}/users",
                "}",
                "userdb {",
                "  driver = static",
                f"  args = uid={uid} gid={gid} home={d}/mail/%u",
                "}",
                # mail processes reused and shared by many sessions: cheap logins and
                # thousands of idle sessions without thousands of processes. The extra
                # processes an idle test starts (9,000 sessions: 9 or more) go 2 s after
                # their last session, not Dovecot's default 60 s: left running, they made
                # the next repetition's login tests 10-25% slower than the first's (see
                # Bench.wait_backend_settled).
                "service imap {",
                "  service_count = 0",
                "  client_limit = 1000",
                "  process_limit = 100",
                f"  process_min_avail = {self.cores}",
                "  idle_kill = 2 secs",
                "}",
                "service pop3 {",
                "  service_count = 0",
                "  client_limit = 1000",
                "  process_limit = 100",
                f"  process_min_avail = {self.cores}",
                "  idle_kill = 2 secs",
                "}",
                "protocol imap {\n  mail_max_userip_connections = 100000\n}",
                "protocol pop3 {\n  mail_max_userip_connections = 100000\n}",
            ]
        else:
            bhost, bimap, bpop3 = self.proxy_to
            out += [
                "passdb {",
                "  driver = static",
                f"  args = proxy=y host={bhost} port=%{{if;%s;eq;pop3;{bpop3};{bimap}}} "
                "nopassword=y",
                "}",
                "userdb {",
                "  driver = static",
                f"  args = uid={uid} gid={gid}",
                "}",
            ]
        return "\n".join(x for x in out if x) + "\n"

    def start(self, timeout: float = 20.0) -> "Dovecot":
        binary = which("dovecot")
        if binary is None:
            raise ServerError("dovecot not installed (bash bench/install.sh)")
        internal, login, uid, gid, extra = _dovecot_accounts()
        for attempt in range(3):
            self.dir = make_tmpdir(f"bench-{self.name}-")
            for sub in ("run", "state"):
                (self.dir / sub).mkdir()
            if self.proxy_to is None:
                self._write_backend_mail(uid, gid)
            self.imap_port = free_port(self.host)
            self.pop3_port = free_port(self.host)
            (self.dir / "dovecot.conf").write_text(self._config(internal, login, uid, gid, extra))
            self._spawn([binary, "-F", "-c", str(self.dir / "dovecot.conf")], "dovecot.stdout")
            try:
                wait_greeting(self.host, self.imap_port, b"* OK", timeout, self.proc)
                wait_greeting(self.host, self.pop3_port, b"+OK", timeout, self.proc)
                return self
            except ServerError as e:
                log = self.log_tail("dovecot.log") + self.log_tail("dovecot.stdout")
                self.stop()
                if attempt < 2 and "in use" in log:
                    continue
                raise ServerError(f"{self.name}: {e}\n{log}") from None
        raise AssertionError("unreachable")


def _message(size: int, n: int) -> bytes:
    head = (f"From: bench@example.invalid\r\nTo: {FETCH_USER}@example.invalid\r\n"
            f"Subject: bench message {n} ({size} bytes)\r\n"
            f"Message-ID: <bench-{n}@example.invalid>\r\n\r\n").encode()
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ab\r\n"
    body_len = size - len(head)
    body = line * (body_len // len(line) + 1)
    body = body[:body_len - 2] + b"\r\n"
    return head + body


# ----------------------------------------------------------------------- targets
class Target(Server):
    """A proxy target: ``imap_port`` and ``pop3_port`` (None = no POP3) on ``host``."""

    has_pop3 = True
    label = ""
    note = ""

    def __init__(self, name: str, host: str, backend: Dovecot, cores: int) -> None:
        super().__init__()
        assert_loopback(host)
        self.name = name
        self.host = host
        self.backend = backend
        self.cores = cores
        self.imap_port = 0
        self.pop3_port: int | None = None

    def aux_pids(self) -> list[int]:
        """Helper processes measured separately (nginx's auth_http server)."""
        return []

    def start(self) -> "Target":
        raise NotImplementedError


class Direct(Target):
    """No proxy: the client talks to the backend (the floor)."""

    label = "direct"

    def start(self) -> "Direct":
        self.host = self.backend.host
        self.imap_port = self.backend.imap_port
        self.pop3_port = self.backend.pop3_port
        return self

    def pids(self) -> list[int]:
        return []

    def stop(self) -> None:
        pass


class HAProxy(Target):
    label = "haproxy (TCP)"

    def start(self) -> "HAProxy":
        binary = which("haproxy")
        if binary is None:
            raise ServerError("haproxy not installed (bash bench/install.sh)")
        self.dir = make_tmpdir("bench-haproxy-")
        self.imap_port = free_port(self.host)
        self.pop3_port = free_port(self.host)
        b = self.backend
        cfg = f"""# generated by bench/servers.py: a plain TCP relay
global
    maxconn 9700
    nbthread {self.cores}
    pidfile {self.dir}/haproxy.pid
defaults
    mode tcp
    timeout connect 10s
    timeout client 1h
    timeout server 1h
listen imap
    bind {self.host}:{self.imap_port}
    server backend {b.host}:{b.imap_port}
listen pop3
    bind {self.host}:{self.pop3_port}
    server backend {b.host}:{b.pop3_port}
"""
        (self.dir / "haproxy.cfg").write_text(cfg)
        self._spawn([binary, "-db", "-f", str(self.dir / "haproxy.cfg")], "haproxy.log")
        self.wait_ready("haproxy", [(self.imap_port, b"* OK")], 10, "haproxy.log")
        return self


class DovecotProxy(Target):
    label = "dovecot proxy"

    def start(self) -> "DovecotProxy":
        b = self.backend
        self.dc = Dovecot(name="dcproxy", host=self.host, cores=self.cores,
                          proxy_to=(b.host, b.imap_port, b.pop3_port))
        self.dc.start()
        self.proc = self.dc.proc
        self.dir = self.dc.dir
        RUNNING.remove(self.dc)
        RUNNING.append(self)
        self.imap_port = self.dc.imap_port
        self.pop3_port = self.dc.pop3_port
        return self

    def stop(self) -> None:
        if hasattr(self, "dc"):
            self.dc.stop()
        self.proc = None
        self.dir = None
        if self in RUNNING:
            RUNNING.remove(self)


class AuthHTTP(Server):
    name = "authhttp"

    def __init__(self, binary: Path, host: str, backend: Dovecot) -> None:
        super().__init__()
        self.binary = binary
        self.host = host
        self.backend = backend
        self.port = 0

    def start(self) -> "AuthHTTP":
        self.dir = make_tmpdir("bench-authhttp-")
        self.port = free_port(self.host)
        b = self.backend
        self._spawn([str(self.binary), self.host, str(self.port), b.host, str(b.imap_port),
                     str(b.pop3_port)], "authhttp.log")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.02)
        tail = self.log_tail("authhttp.log")
        self.stop()
        raise ServerError(f"authhttp did not start\n{tail}")


NGINX_MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"


class Nginx(Target):
    label = "nginx mail"

    def __init__(self, *a, authhttp_binary: Path, proxy_buffer: str = "", **kw) -> None:
        super().__init__(*a, **kw)
        self.authhttp_binary = authhttp_binary
        self.proxy_buffer = proxy_buffer
        self.auth: AuthHTTP | None = None

    def aux_pids(self) -> list[int]:
        return self.auth.pids() if self.auth else []

    def start(self) -> "Nginx":
        binary = which("nginx")
        if binary is None:
            raise ServerError("nginx not installed (bash bench/install.sh)")
        # the auth server lives on the next 127.x address
        parts = self.host.split(".")
        auth_host = ".".join(parts[:3] + [str(int(parts[3]) + 1)])
        self.auth = AuthHTTP(self.authhttp_binary, auth_host, self.backend).start()
        self.dir = make_tmpdir("bench-nginx-")
        self.imap_port = free_port(self.host)
        self.pop3_port = free_port(self.host)
        load = ""
        if os.path.exists(NGINX_MAIL_MODULE):
            load = f"load_module {NGINX_MAIL_MODULE};\n"
        buf = f"    proxy_buffer {self.proxy_buffer};\n" if self.proxy_buffer else ""
        cfg = f"""# generated by bench/servers.py
{load}daemon off;
master_process on;
worker_processes {self.cores};
worker_rlimit_nofile 19900;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log error;
events {{
    worker_connections 19500;
}}
mail {{
    server_name bench.invalid;
    auth_http {auth_host}:{self.auth.port}/auth;
    proxy on;
    imap_auth plain login;
    pop3_auth plain;
{buf}    server {{
        listen {self.host}:{self.imap_port};
        protocol imap;
    }}
    server {{
        listen {self.host}:{self.pop3_port};
        protocol pop3;
    }}
}}
"""
        (self.dir / "nginx.conf").write_text(cfg)
        self._spawn([binary, "-p", f"{self.dir}/", "-e", f"{self.dir}/error.log",
                     "-c", str(self.dir / "nginx.conf")], "nginx.stdout")
        self.wait_ready("nginx", [(self.imap_port, b"* OK")], 10, "error.log", "nginx.stdout")
        return self

    def stop(self) -> None:
        super().stop()
        if self.auth is not None:
            self.auth.stop()
            self.auth = None


class TrioFloor(Target):
    """bench/floor.py: the least a Trio login proxy can do (a yardstick, not a peer)."""

    label = "trio floor"
    script = "floor.py"

    def __init__(self, *a, workers: int = 1, **kw) -> None:
        super().__init__(*a, **kw)
        self.workers = workers

    def start(self) -> "TrioFloor":
        import sys
        b = self.backend
        self.dir = make_tmpdir("bench-floor-")
        self.imap_port = free_port(self.host)
        self.pop3_port = free_port(self.host)
        self._spawn([sys.executable, str(BENCH_DIR / self.script),
                     "--imap", f"{self.host}:{self.imap_port}",
                     "--pop3", f"{self.host}:{self.pop3_port}",
                     "--backend-imap", f"{b.host}:{b.imap_port}",
                     "--backend-pop3", f"{b.host}:{b.pop3_port}",
                     "--workers", str(self.workers)], "floor.log")
        self.wait_ready(self.label, [(self.imap_port, b"* OK"), (self.pop3_port, b"+OK")],
                        20, "floor.log")
        return self


class LoopFloor(TrioFloor):
    """bench/floor_loop.py: the same floor on one epoll loop with callbacks, no Trio."""

    label = "loop floor"
    script = "floor_loop.py"


class LibraryLoop(TrioFloor):
    """bench/floor_library.py: the daemon's own login work (its config, sans-io protocol
    objects, passdb chain, log lines) driven by floor_loop's epoll callbacks. IMAP only."""

    label = "library loop"
    script = "floor_library.py"
    has_pop3 = False

    def start(self) -> "LibraryLoop":
        import sys
        self.dir = make_tmpdir("bench-libloop-")
        self.imap_port = free_port(self.host)
        cfg_path = self.dir / "mailproxy.toml"
        cfg_path.write_text(daemon_config(self.backend, self.host, self.imap_port, None,
                                          self.workers, self.dir))
        self._spawn([sys.executable, str(BENCH_DIR / self.script), "--config", str(cfg_path)],
                    "floor.log", env=env_importing(TRIO_SRC))
        self.wait_ready(self.label, [(self.imap_port, b"* OK")], 20, "floor.log")
        return self


def env_importing(src: Path) -> dict[str, str]:
    """This process's environment, with `src` first on PYTHONPATH: a child started with it
    imports trio-mailproxy's code from there."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src) + (os.pathsep + env["PYTHONPATH"]
                                    if env.get("PYTHONPATH") else "")
    return env


def daemon_config(b: "Dovecot", host: str, imap_port: int | None, pop3_port: int | None,
                  workers: int, directory: Path) -> str:
    """The bench's trio-mailproxy config (also read by bench/floor_library.py)."""
    if pop3_port is None:
        port = f"{b.imap_port}"
        pop3 = ""
    else:
        # one static passdb for both protocols: Dovecot's %{if} picks the backend port
        port = f"%{{if;%s;eq;pop3;{b.pop3_port};{b.imap_port}}}"
        pop3 = (f'\n[[listener]]\nprotocol = "pop3"\nbind = "{host}:{pop3_port}"\n'
                'tls = "none"\n')
    return f"""# generated by bench/servers.py
workers = {workers}
admin_socket = "{directory}/admin.sock"
shutdown_grace = 1

[[listener]]
protocol = "imap"
bind = "{host}:{imap_port}"
tls = "none"
{pop3}
[[passdb]]
driver = "static"
args = "proxy=y host={b.host} port={port} nopassword=y"

[auth]
disable_plaintext_auth = false
failure_delay = 0

[limits]
max_connections = 20000
max_connections_per_ip = 20000
"""


def trio_mailproxy_argv() -> list[str] | None:
    """How to run our daemon: the console script, else the module from the source tree."""
    script = shutil.which("trio-mailproxy")
    if script:
        return [script]   # run with PYTHONPATH=<repo>/src: the working tree's code wins
    if (REPO_ROOT / "src" / "mailproxy" / "cli.py").exists():
        import sys
        return [sys.executable, "-c", "import sys; from mailproxy.cli import main; "
                "sys.exit(main())"]
    return None


class TrioMailproxy(Target):
    label = "trio-mailproxy"
    compiled_label = "trio-mailproxy, compiled"

    def __init__(self, *a, workers: int = 1, src: Path | None = None, compiled: bool = False,
                 prefix: list[str] | None = None, ready_timeout: float = 20, **kw) -> None:
        super().__init__(*a, **kw)
        self.workers = workers
        # src: the code to run (default TRIO_SRC, or TRIO_COMPILED if compiled); prefix: a
        # command the daemon runs under (bench/compare.py: valgrind), which makes its
        # start slower
        self.src = src
        self.compiled = compiled
        if compiled:
            self.label = self.compiled_label
        self.prefix = prefix or []
        self.ready_timeout = ready_timeout
        self.processes_seen = 0
        # POP3 joins by itself once the daemon accepts a pop3 listener (checked with
        # `trio-mailproxy check` at each start); until then the reason is kept here
        self.has_pop3 = False
        self.pop3_note = ""

    def _config(self, pop3_port: int | None) -> str:
        assert self.dir is not None
        return daemon_config(self.backend, self.host, self.imap_port, pop3_port,
                             self.workers, self.dir)

    def start(self) -> "TrioMailproxy":
        argv = trio_mailproxy_argv()
        if argv is None:
            raise ServerError("trio-mailproxy not installed (pip install -e .)")
        if self.compiled and TRIO_COMPILED is None:
            raise ServerError("no compiled build (scripts/build_compiled.py failed)")
        self.dir = make_tmpdir("bench-trio-")
        self.imap_port = free_port(self.host)
        env = env_importing(self.src or (TRIO_COMPILED if self.compiled else TRIO_SRC))
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        cfg_path = self.dir / "mailproxy.toml"
        self.pop3_port = free_port(self.host)
        cfg_path.write_text(self._config(self.pop3_port))
        check = subprocess.run([*argv, "check", "-c", str(cfg_path)], env=env,
                               capture_output=True, text=True, timeout=60,
                               stdin=subprocess.DEVNULL)
        if check.returncode == 0:
            self.has_pop3 = True
        else:
            self.has_pop3 = False
            lines = (check.stderr or check.stdout).strip().splitlines()
            note = lines[0] if lines else f"check exited {check.returncode}"
            self.pop3_note = re.sub(r"^\S+:\d+: ", "", note)  # drop the temp file's name
            self.pop3_port = None
            cfg_path.write_text(self._config(None))
        if self.prefix:
            # the interpreter itself, not a console script or pyenv's shim (valgrind
            # would follow that instead of Python)
            argv = [*self.prefix, os.path.realpath(sys.executable), "-m", "mailproxy.cli"]
        self._spawn([*argv, "run", "-c", str(cfg_path)], "mailproxy.log", env=env)
        greetings = [(self.imap_port, b"* OK")]
        if self.pop3_port is not None:
            greetings.append((self.pop3_port, b"+OK"))
        self.wait_ready("trio-mailproxy", greetings, self.ready_timeout, "mailproxy.log")
        # workers start asynchronously: give them a moment, then count processes
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            self.processes_seen = len(self.pids())
            if self.processes_seen >= self.workers:
                break
            time.sleep(0.1)
        if self.compiled:
            self.check_compiled_loaded()
        return self

    def check_compiled_loaded(self) -> None:
        """The label must be true: every process of the daemon has the compiled
        protocols/imap extension mapped (from the compiled build, not a stray copy)."""
        assert TRIO_COMPILED is not None
        ext = str(TRIO_COMPILED / "mailproxy" / "protocols" / "imap.cpython-")
        for pid in self.pids():
            try:
                maps = Path(f"/proc/{pid}/maps").read_text()
            except OSError:
                continue
            if ext not in maps:
                self.stop()
                raise ServerError(f"{self.label}: process {pid} did not load "
                                  f"{ext}*.so")
