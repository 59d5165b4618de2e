"""Private, throw-away Dovecot 2.3 instances for end-to-end tests, captures and demos.

Owns: writing a self-contained dovecot.conf into a fresh temporary directory, starting
``dovecot -F`` on loopback ports, waiting until it greets, and stopping it together with
every process it started. It never touches /etc/dovecot, /run/dovecot or
/var/lib/dovecot, so it can run next to a packaged Dovecot and next to other instances.

Two roles:

* a mail **backend** (the default): passwd-file users, Maildir under the temp dir, optional
  master users, imaps/pop3s listeners when a certificate is given;
* a login **proxy** (``DovecotBackend.proxy(...)``): a passdb that answers ``proxy=y
  host=... port=...`` so Dovecot itself is the reference proxy (spec/capture.py).

Must not import ``mailproxy``: this is the independent reference the proxy is tested
against.
"""

from __future__ import annotations

import atexit
import os
import pwd
import grp
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path

from .net import free_port, wait_for_greeting

__all__ = [
    "DEFAULT_USERS",
    "DEFAULT_MASTER_USERS",
    "DovecotBackend",
    "DovecotError",
    "dovecot_binary",
    "dovecot_missing_reason",
    "live_group_members",
]

#: The users every e2e test can rely on (tests/conftest.py's ``dovecot_backend``).
DEFAULT_USERS: dict[str, str] = {"alice": "alicepw", "bob": "bobpw"}
#: Master users (log in as ``user*master`` with the master's password).
DEFAULT_MASTER_USERS: dict[str, str] = {"master": "masterpw"}

#: Set this to a dovecot binary to use instead of the one on PATH (also handy to check the
#: "dovecot missing" skip path by hand: MAILPROXY_DOVECOT=/nonexistent).
DOVECOT_ENV = "MAILPROXY_DOVECOT"
#: Where Debian (and most distributions) put the login/mail processes Dovecot execs.
LIBEXEC_DIRS = ("/usr/lib/dovecot", "/usr/libexec/dovecot")
_SETUP_HINT = "run scripts/setup.sh (as root) to install it"


class DovecotError(RuntimeError):
    """Dovecot could not be started (the message carries the log tail)."""


def dovecot_binary() -> str | None:
    """Path of the dovecot master binary, or None when it is not installed."""
    override = os.environ.get(DOVECOT_ENV)
    if override:
        return override if os.access(override, os.X_OK) else None
    found = shutil.which("dovecot")
    if found:
        return found
    # /usr/sbin is not on a non-root user's PATH on Debian.
    for candidate in ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def dovecot_missing_reason() -> str | None:
    """None when a usable Dovecot is installed, else a sentence naming what is missing."""
    binary = dovecot_binary()
    if binary is None:
        where = os.environ.get(DOVECOT_ENV) or "dovecot"
        return f"dovecot binary not found ({where}): {_SETUP_HINT}"
    if os.environ.get(DOVECOT_ENV):
        return None  # an explicit override is trusted to know where its helpers are
    for d in LIBEXEC_DIRS:
        if all(os.access(os.path.join(d, b), os.X_OK) for b in ("imap-login", "pop3-login")):
            return None
    return (
        "dovecot login processes (imap-login, pop3-login) not found in "
        f"{' or '.join(LIBEXEC_DIRS)}: {_SETUP_HINT}"
    )


def _check_field(what: str, value: str) -> None:
    # passwd-file is colon-separated and line-based: these would corrupt the file silently.
    if any(c in value for c in ":\n\r"):
        raise ValueError(f"{what} {value!r} must not contain ':' or a line break")


def live_group_members(pgid: int) -> list[int]:
    """PIDs of processes in process group ``pgid`` that are not zombies (from /proc).

    Zombies are ignored: killed children of an exited master are reparented to init,
    which reaps them when it gets round to it; they no longer run or hold ports.
    """
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # "pid (comm) state ppid pgrp ...": comm may contain spaces and ')'.
                state, _ppid, pgrp = f.read().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry))
    return members


# Every instance still running, so a crashed test run does not leave Dovecots behind.
_RUNNING: "weakref.WeakSet[DovecotBackend]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for backend in list(_RUNNING):
        backend.stop()


class DovecotBackend:
    """A private Dovecot 2.3 on loopback; a context manager, or call start()/stop().

    Example::

        with DovecotBackend({"alice": "alicepw"}) as dc:
            imaplib.IMAP4(dc.host, dc.imap_port).login("alice", "alicepw")

    Ports left as None are picked free at start (and re-picked if another process grabs
    one first). After start: ``host``, ``imap_port``, ``pop3_port``, ``imaps_port`` and
    ``pop3s_port`` (None unless a certificate was given), ``dir`` (the temp dir),
    ``config_path``, ``log_path``.
    """

    def __init__(
        self,
        users: Mapping[str, str | None] | None = None,
        *,
        master_users: Mapping[str, str] | None = None,
        user_fields: Mapping[str, str] | None = None,
        passdb_fields: str = "",
        static_passdb: str | None = None,
        trusted_networks: Sequence[str] = ("127.0.0.0/8",),
        tls_cert: os.PathLike[str] | str | None = None,
        tls_key: os.PathLike[str] | str | None = None,
        ssl_client_ca: os.PathLike[str] | str | None = None,
        protocols: Sequence[str] = ("imap", "pop3"),
        host: str = "127.0.0.1",
        imap_port: int | None = None,
        imaps_port: int | None = None,
        pop3_port: int | None = None,
        pop3s_port: int | None = None,
        auth_failure_delay: float | None = None,
        login_greeting: str | None = None,
        extra_config: str = "",
        ready_timeout: float = 10.0,
        keep_dir: bool = False,
    ) -> None:
        """Configure (but do not start) an instance.

        users: name → password, written to a passwd-file as ``{PLAIN}password``; None or
            "" leaves the password empty (for ``nopassword=y`` proxy entries).
        master_users: name → password for a ``master = yes`` passdb;
            ``auth_master_user_separator = *`` so ``alice*master`` logs in as alice.
        user_fields: name → passdb extra fields (``"key=value key=value"``) for that user.
        passdb_fields: extra fields appended to every user's line.
        static_passdb: if set, the args of a ``passdb static`` used INSTEAD of the
            passwd-file (e.g. ``"nopassword=y proxy=y host=127.0.0.1 port=1430"``).
        trusted_networks: ``login_trusted_networks`` (whose ID x-originating-ip etc. this
            instance believes, and which count as secured).
        tls_cert/tls_key: PEM paths; enable ``ssl = yes``, imaps/pop3s listeners and
            STARTTLS/STLS on the plain ones. Copied into the instance's dir.
        ssl_client_ca: PEM CA file Dovecot trusts when IT connects out with TLS (proxy
            ``ssl=yes``/``starttls=yes``).
        auth_failure_delay: seconds; None keeps Dovecot's default (2 s).
        login_greeting: None keeps Dovecot's (Debian: "Dovecot (Debian) ready.").
        extra_config: raw dovecot.conf text appended last (later settings win).
        ready_timeout: seconds start() waits for the IMAP greeting.
        keep_dir: leave the temp dir behind after stop() (for post-mortems).
        """
        self.users: dict[str, str] = {k: (v or "") for k, v in (users or {}).items()}
        self.master_users = dict(master_users or {})
        self.user_fields = dict(user_fields or {})
        self.passdb_fields = passdb_fields
        self.static_passdb = static_passdb
        self.trusted_networks = list(trusted_networks)
        self.tls_cert = Path(tls_cert) if tls_cert else None
        self.tls_key = Path(tls_key) if tls_key else None
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        self.ssl_client_ca = Path(ssl_client_ca) if ssl_client_ca else None
        self.protocols = list(protocols)
        if "imap" not in self.protocols:
            raise ValueError("imap must be enabled: readiness is checked on the IMAP port")
        self.host = host
        self.auth_failure_delay = auth_failure_delay
        self.login_greeting = login_greeting
        self.extra_config = extra_config
        self.ready_timeout = ready_timeout
        self.keep_dir = keep_dir
        for name, pw in {**self.users, **self.master_users}.items():
            _check_field("user name", name)
            _check_field("password", pw)
        for name, fields in self.user_fields.items():
            if "\n" in fields or "\r" in fields:
                raise ValueError(f"extra fields for {name!r} must be one line")

        # Ports the caller fixed stay fixed; the others are (re)picked at each attempt.
        self._fixed_ports = {
            "imap": imap_port,
            "imaps": imaps_port,
            "pop3": pop3_port,
            "pop3s": pop3s_port,
        }
        self.imap_port: int = imap_port or 0
        self.imaps_port: int | None = imaps_port
        self.pop3_port: int | None = pop3_port
        self.pop3s_port: int | None = pop3s_port

        self.dir: Path | None = None
        self.config_path: Path | None = None
        self.log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # ----------------------------------------------------------------- construction
    @classmethod
    def proxy(
        cls,
        backend_port: int,
        *,
        backend_host: str = "127.0.0.1",
        fields: str = "nopassword=y",
        users: Mapping[str, str | None] | None = None,
        user_fields: Mapping[str, str] | None = None,
        trusted_networks: Sequence[str] = (),
        **kwargs: object,
    ) -> "DovecotBackend":
        """A Dovecot that is itself an IMAP/POP3 login proxy to ``backend_host:port``.

        Without ``users`` a ``passdb static`` answers every login with
        ``proxy=y host=<backend_host> port=<backend_port> <fields>``; with ``users`` a
        passwd-file holds them, each with those fields (plus ``user_fields[name]``).
        ``fields`` defaults to ``nopassword=y``: accept any password here and forward it,
        leaving the real check to the backend (Dovecot then passes the client's own
        password on as ``pass``).
        """
        route = f"proxy=y host={backend_host} port={backend_port}"
        common = f"{route} {fields}".strip()
        if users is None:
            return cls(
                static_passdb=common,
                user_fields=user_fields,
                trusted_networks=trusted_networks,
                **kwargs,  # type: ignore[arg-type]
            )
        return cls(
            users,
            passdb_fields=common,
            user_fields=user_fields,
            trusted_networks=trusted_networks,
            **kwargs,  # type: ignore[arg-type]
        )

    # --------------------------------------------------------------------- queries
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def maildir(self, user: str) -> Path:
        """The user's INBOX Maildir (``cur/``, ``new/``, ``tmp/`` inside)."""
        assert self.dir is not None, "not started"
        return self.dir / "mail" / user

    def log_text(self) -> str:
        """Everything Dovecot logged so far (one file: info, errors and debug)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def doveadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``doveadm -c <our config> ARGS`` (e.g. ``"proxy", "list"``)."""
        assert self.config_path is not None, "not started"
        doveadm = shutil.which("doveadm") or "/usr/bin/doveadm"
        return subprocess.run(
            [doveadm, "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=30,
        )

    # ------------------------------------------------------------------- lifecycle
    def __enter__(self) -> "DovecotBackend":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> "DovecotBackend":
        """Start Dovecot and wait until the IMAP port greets; returns self."""
        if self.running:
            return self
        reason = dovecot_missing_reason()
        if reason:
            raise DovecotError(reason)
        if self.dir is None:
            self.dir = self._make_dir()
        self.config_path = self.dir / "dovecot.conf"
        self.log_path = self.dir / "dovecot.log"
        self._write_files()

        auto_ports = not all(self._fixed_ports[p] for p in self._wanted_ports())
        attempts = 3 if auto_ports else 1
        for attempt in range(1, attempts + 1):
            self._pick_ports()
            self.config_path.write_text(self._config_text())
            try:
                self._spawn_and_wait()
                _RUNNING.add(self)
                return self
            except DovecotError:
                log = self.log_text()
                self._kill()
                # Lost the free_port() race to another process: try again with new ports.
                if attempt < attempts and "Address already in use" in log:
                    self.log_path.unlink(missing_ok=True)
                    continue
                self._cleanup_dir()
                raise
        raise AssertionError("unreachable")

    def stop(self, graceful: bool | None = None) -> None:
        """Stop Dovecot and every process it started; remove the temp dir. Idempotent.

        graceful: SIGTERM the master and let it shut its services down (about 1 s: the
        master waits for its children) before killing what is left; default only when
        ``keep_dir`` is set, since the directory is otherwise deleted anyway and SIGKILL
        of the whole process group is instant.
        """
        _RUNNING.discard(self)
        self._kill(self.keep_dir if graceful is None else graceful)
        self._cleanup_dir()

    # ------------------------------------------------------------------- internals
    def _wanted_ports(self) -> list[str]:
        ports = ["imap"]
        if "pop3" in self.protocols:
            ports.append("pop3")
        if self.tls_cert is not None:
            ports.append("imaps")
            if "pop3" in self.protocols:
                ports.append("pop3s")
        return ports

    def _pick_ports(self) -> None:
        wanted = self._wanted_ports()
        chosen: dict[str, int | None] = {}
        for name in ("imap", "imaps", "pop3", "pop3s"):
            if name in wanted:
                chosen[name] = self._fixed_ports[name] or free_port(self.host)
            else:
                chosen[name] = None
        self.imap_port = chosen["imap"] or 0
        self.imaps_port = chosen["imaps"]
        self.pop3_port = chosen["pop3"]
        self.pop3s_port = chosen["pop3s"]

    @staticmethod
    def _make_dir() -> Path:
        # Not pytest's tmp_path: that lives under a 0700 directory that Dovecot's
        # unprivileged processes (auth as "dovecot", mail as "nobody") cannot traverse,
        # and it can be long enough to overflow a unix socket path (108 bytes).
        base = tempfile.gettempdir()
        if len(base) > 40:
            base = "/tmp"
        d = Path(tempfile.mkdtemp(prefix="mailproxy-dc-", dir=base))
        d.chmod(0o755)
        return d

    def _accounts(self) -> tuple[str, str, int, int]:
        """(internal user, login user, mail uid, mail gid) that work for who we are."""
        if os.geteuid() == 0:
            # Dovecot's own unprivileged accounts from the Debian packages; mail is stored
            # as "nobody" because Dovecot refuses mail access as root (uid 0 < 500).
            internal = "dovecot"
            login = "dovenull"
            for account in (internal, login):
                try:
                    pwd.getpwnam(account)
                except KeyError:
                    raise DovecotError(
                        f"system user {account!r} missing (created by the dovecot-core "
                        f"package): {_SETUP_HINT}"
                    ) from None
            nobody = pwd.getpwnam("nobody")
            return internal, login, nobody.pw_uid, nobody.pw_gid
        # Unprivileged: every process runs as us (Dovecot allows that when not root).
        me = pwd.getpwuid(os.getuid())
        return me.pw_name, me.pw_name, me.pw_uid, os.getgid()

    def _write_files(self) -> None:
        assert self.dir is not None
        _, _, uid, gid = self._accounts()
        for sub in ("run", "state"):
            (self.dir / sub).mkdir(exist_ok=True)
        mail = self.dir / "mail"
        mail.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            os.chown(mail, uid, gid)
        mail.chmod(0o755)

        lines = []
        for name, pw in self.users.items():
            fields = " ".join(
                f for f in (self.passdb_fields, self.user_fields.get(name, "")) if f
            )
            secret = f"{{PLAIN}}{pw}" if pw else ""
            lines.append(f"{name}:{secret}::::::{fields}\n")
        (self.dir / "users").write_text("".join(lines))
        (self.dir / "masters").write_text(
            "".join(f"{n}:{{PLAIN}}{pw}::::::\n" for n, pw in self.master_users.items())
        )
        for p in ("users", "masters"):
            (self.dir / p).chmod(0o644)  # read by the auth process (user "dovecot")

        if self.tls_cert is not None and self.tls_key is not None:
            shutil.copyfile(self.tls_cert, self.dir / "cert.pem")
            shutil.copyfile(self.tls_key, self.dir / "key.pem")
            (self.dir / "key.pem").chmod(0o600)
        if self.ssl_client_ca is not None:
            shutil.copyfile(self.ssl_client_ca, self.dir / "client-ca.pem")

    def _config_text(self) -> str:
        assert self.dir is not None
        d = self.dir
        internal, login, uid, gid = self._accounts()
        out: list[str] = [
            "# Generated by tests/support/dovecot.py: a private, throw-away instance.",
            f"base_dir = {d / 'run'}",
            f"state_dir = {d / 'state'}",
            # Shows in ps output and log prefixes: tells instances apart.
            f"instance_name = {d.name}",
            f"log_path = {d / 'dovecot.log'}",
            f"protocols = {' '.join(self.protocols)}",
            f"listen = {self.host}",
            f"default_internal_user = {internal}",
            f"default_login_user = {login}",
            # Dovecot's default first_valid_uid (500) would refuse "nobody" on some systems.
            "first_valid_uid = 1",
            "first_valid_gid = 1",
            f"mail_location = maildir:{d / 'mail'}/%u",
            "disable_plaintext_auth = no",
            "auth_mechanisms = plain login",
            "auth_verbose = yes",
            # Logs the ID a proxy sends, so tests can see x-originating-ip etc.
            "imap_id_log = *",
            f"login_trusted_networks = {' '.join(self.trusted_networks)}",
            # login_log_format_elements stays Dovecot's default: it has rip= and lip=.
        ]
        if self.auth_failure_delay is not None:
            out.append(f"auth_failure_delay = {int(self.auth_failure_delay * 1000)} msecs")
        if self.login_greeting is not None:
            out.append(f"login_greeting = {self.login_greeting}")
        if os.geteuid() != 0:
            # Socket groups default to "dovecot", which we cannot chown to.
            out.append(f"default_internal_group = {grp.getgrgid(gid).gr_name}")
            # chroot needs root: these services (Dovecot 2.3 defaults with a chroot) would
            # die at startup.
            for svc in ("anvil", "ipc", "old-stats", "aggregator", "imap-login",
                        "pop3-login", "imap-urlauth-login"):
                out.append(f"service {svc} {{\n  chroot =\n}}")

        if self.tls_cert is not None:
            out += ["ssl = yes", f"ssl_cert = <{d / 'cert.pem'}", f"ssl_key = <{d / 'key.pem'}"]
            dh = Path("/usr/share/dovecot/dh.pem")
            if dh.exists():
                out.append(f"ssl_dh = <{dh}")
        else:
            out.append("ssl = no")
        if self.ssl_client_ca is not None:
            # Dovecot 2.3's login proxy ignores ssl_client_ca_* (its login processes are
            # chrooted; see PasswordDatabase.ExtraFields.Proxy): it verifies backends
            # against ssl_ca, read as content (<file) before the chroot. Set both, so
            # other outgoing TLS (e.g. doveadm, lmtp) trusts the same CA.
            out.append(f"ssl_client_ca_file = {d / 'client-ca.pem'}")
            out.append(f"ssl_ca = <{d / 'client-ca.pem'}")
            # ssl_ca brings CRL checks (ssl_require_crl = yes); a test CA has no CRL.
            out.append("ssl_require_crl = no")

        if self.master_users:
            out += [
                "auth_master_user_separator = *",
                "passdb {",
                "  driver = passwd-file",
                f"  args = {d / 'masters'}",
                "  master = yes",
                # pass = yes: the target user must also exist in the normal passdb.
                "  pass = yes",
                "}",
            ]
        if self.static_passdb is not None:
            out += ["passdb {", "  driver = static", f"  args = {self.static_passdb}", "}"]
        else:
            out += ["passdb {", "  driver = passwd-file", f"  args = {d / 'users'}", "}"]
        out += [
            "userdb {",
            "  driver = static",
            f"  args = uid={uid} gid={gid} home={d / 'mail'}/%u",
            "}",
        ]

        imaps = self.imaps_port if self.imaps_port is not None else 0
        out += [
            "service imap-login {",
            f"  inet_listener imap {{\n    port = {self.imap_port}\n  }}",
            f"  inet_listener imaps {{\n    port = {imaps}\n    ssl = yes\n  }}",
            "}",
        ]
        if "pop3" in self.protocols:
            pop3s = self.pop3s_port if self.pop3s_port is not None else 0
            out += [
                "service pop3-login {",
                f"  inet_listener pop3 {{\n    port = {self.pop3_port}\n  }}",
                f"  inet_listener pop3s {{\n    port = {pop3s}\n    ssl = yes\n  }}",
                "}",
            ]
        # Nothing else may listen on a standard port (a packaged Dovecot may hold them).
        out += ["service imap-urlauth-login {\n  unix_listener imap-urlauth {\n  }\n}"]
        if self.extra_config:
            out += ["# extra_config", self.extra_config]
        return "\n".join(out) + "\n"

    def _spawn_and_wait(self) -> None:
        assert self.dir is not None and self.config_path is not None
        binary = dovecot_binary()
        assert binary is not None
        out = open(self.dir / "dovecot.stdout", "wb")
        try:
            # -F: foreground, so we own the master process. A new session/process group
            # lets stop() kill every child in one signal even if the master dies first.
            self._proc = subprocess.Popen(
                [binary, "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            out.close()
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if self._proc.poll() is not None:
                raise DovecotError(self._failure(f"dovecot exited with {self._proc.returncode}"))
            try:
                wait_for_greeting(self.host, self.imap_port, timeout=0.2)
                return
            except TimeoutError:
                pass
            if time.monotonic() > deadline:
                raise DovecotError(
                    self._failure(f"no IMAP greeting on {self.host}:{self.imap_port} "
                                  f"within {self.ready_timeout:g}s")
                )

    def _failure(self, what: str) -> str:
        assert self.dir is not None
        stdout = (self.dir / "dovecot.stdout").read_text(errors="replace")
        tail = "\n".join(self.log_text().splitlines()[-30:])
        kept = "" if self.keep_dir else " (removed after this error; keep_dir=True keeps it)"
        return (
            f"private Dovecot failed to start: {what}\n"
            f"config: {self.config_path}{kept}\n--- dovecot stdout/stderr ---\n{stdout}"
            f"--- log tail ---\n{tail}"
        )

    def _kill(self, graceful: bool = False) -> None:
        proc = self._proc
        if proc is None:
            return
        if graceful and proc.poll() is None:
            # SIGTERM: Dovecot's master stops its services and (shutdown_clients = yes)
            # every mail process, then exits.
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                # WNOWAIT: watch for the exit without reaping, so the master's pid (and
                # with it our process group id) cannot be reused before killpg below.
                if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                    break
                time.sleep(0.02)
        # Whatever is left of the group (everything, when not graceful) gets SIGKILL.
        # Dovecot's children (anvil, log, auth, login and mail processes) never leave the
        # master's process group.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        # SIGKILL is asynchronous: wait (bounded) until nothing of the group still runs,
        # so the ports are free and no process outlives stop(). The master is reaped only
        # after that, so its pid (our group id) cannot be reused meanwhile.
        deadline = time.monotonic() + 5
        while live_group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        self._proc = None

    def _cleanup_dir(self) -> None:
        if self.dir is not None and not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
