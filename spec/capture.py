#!/usr/bin/env python3
"""Capture byte-level transcripts of Dovecot 2.3 acting as an IMAP login proxy.

For each scenario this starts

* a *capture backend*: a scripted fake IMAP server on 127.0.0.1 that answers the way
  Dovecot's imap backend does (greeting, ID, CAPABILITY, LOGIN/AUTHENTICATE, LOGOUT),
  varied per scenario (no SASL-IR, NO replies, untagged alerts, ...);
* a private Dovecot (tests/support/dovecot.py) on 127.0.0.3 whose passwd-file answers the
  login with ``proxy=y host=127.0.0.1 port=<capture backend> <scenario fields>``;
* a scripted client on 127.0.0.2,

records every line on both legs with its arrival time and writes spec/imap/<scenario>.txt
(format: spec/README.md). Distinct loopback addresses for client and proxy keep
``{client_ip}`` and ``{proxy_ip}`` apart when normalising.

    python3 spec/capture.py                  # capture all, rewrite spec/imap/*.txt
    python3 spec/capture.py login-nopassword # only these scenarios
    python3 spec/capture.py --check          # capture, compare each leg with the files,
                                             # exit 1 if one differs (nothing written)
    python3 spec/capture.py --list
    CAPTURE_DEBUG=1 python3 spec/capture.py ...  # also print each accepted backend connection

Not run by the test suite: the transcripts are committed, and the replay test compares our
proxy against them. Must not import ``mailproxy``: this is the independent reference.
"""

from __future__ import annotations

import argparse
import os
import base64
import difflib
import re
import select
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.dovecot import DovecotBackend, dovecot_missing_reason  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.tls import TLSFiles, make_tls_files  # noqa: E402

OUT_DIR = REPO / "spec" / "imap"

CLIENT_IP = "127.0.0.2"
PROXY_IP = "127.0.0.3"
BACKEND_IP = "127.0.0.1"

#: What a Dovecot 2.3 imap backend advertises before login (its imap-login greeting).
BACKEND_CAPS = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN"
BACKEND_GREETING = f"* OK [CAPABILITY {BACKEND_CAPS}] Dovecot ready."
#: ... and after login (shortened from the real list; only its shape matters here).
POST_LOGIN_CAPS = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT UIDPLUS MOVE LITERAL+ NAMESPACE"
LOGIN_OK = f"{{tag}} OK [CAPABILITY {POST_LOGIN_CAPS}] Logged in"

LINE_TIMEOUT = 20.0  # seconds a scripted peer waits for one line (reconnects take ~3 s)


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


# --------------------------------------------------------------------------- recording
class Recorder:
    """Timestamped lines from every leg of one scenario, in arrival order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self.events: list[tuple[int, int, str, str]] = []

    def add(self, kind: str, text: str) -> None:
        with self._lock:
            self._seq += 1
            self.events.append((time.monotonic_ns(), self._seq, kind, text))

    def lines(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(k, t) for _, _, k, t in sorted(self.events)]


class Peer:
    """One end of a TCP connection that we script (the client, or the capture backend).

    Single-threaded on purpose: the script blocks in expect() whenever it waits for the
    other side, so a line is recorded as soon as it arrives; and an ssl.SSLSocket must not
    be read and written from two threads at once (backend STARTTLS / ssl=yes scenarios).
    All complete lines of one received chunk are recorded before the script sees the
    first, so pipelined lines (ID + LOGIN in one write) show as arrived before the reply
    to the first one. Outgoing lines are recorded just before they are written, so a
    reply can never be timestamped before the line that caused it.
    """

    def __init__(
        self, sock: socket.socket, rec: Recorder, *, out: str, inp: str, name: str, peer: str
    ) -> None:
        self.sock = sock
        self.rec = rec
        self.out_kind, self.in_kind = out, inp
        self.name, self.peer_name = name, peer
        self.pending: list[str] = []
        self.buf = b""
        self.eof = False
        self.closed = False

    def _fill(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError(f"{self.name}: no line within {timeout:g}s") from None
        except OSError:
            chunk = b""
        if not chunk:
            if self.buf:
                # A line the peer never finished: kept, and flagged so it is not mistaken
                # for a CRLF-terminated one.
                self.rec.add(self.in_kind, self.buf.decode("ascii"))
                self.rec.add("#", f"(the {self.in_kind} line above had no CRLF)")
                self.buf = b""
            self.eof = True
            self.rec.add("--", f"{self.name} close by {self.peer_name}")
            return
        self.buf += chunk
        lines = []
        while b"\r\n" in self.buf:
            raw, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(raw.decode("ascii"))
        for line in lines:
            self.rec.add(self.in_kind, line)
        self.pending += lines

    def send(self, *lines: str) -> None:
        """Write lines in ONE write, as a server writes a multi-line reply."""
        for line in lines:
            self.rec.add(self.out_kind, line)
        self.sock.sendall("".join(f"{line}\r\n" for line in lines).encode("ascii"))

    def expect(self, timeout: float = LINE_TIMEOUT) -> str | None:
        """The next incoming line; None at EOF."""
        deadline = time.monotonic() + timeout
        while not self.pending and not self.eof:
            self._fill(max(0.01, deadline - time.monotonic()))
        return self.pending.pop(0) if self.pending else None

    def until_tagged(self, tag: str) -> list[str]:
        """Read lines until the tagged reply for ``tag`` (returned last)."""
        lines = []
        while True:
            line = self.expect()
            if line is None:
                raise ConnectionError(f"{self.name}: EOF while waiting for {tag!r}: {lines}")
            lines.append(line)
            if line.startswith(tag + " "):
                return lines

    def wait_eof(self, timeout: float = LINE_TIMEOUT) -> None:
        while self.expect(timeout) is not None:
            pass

    def start_tls(self, ctx: ssl.SSLContext) -> None:
        """Server side of STARTTLS: the proxy waits for our OK, so nothing is pending."""
        assert not self.pending and not self.buf, "bytes after STARTTLS before the handshake"
        self.sock.settimeout(LINE_TIMEOUT)
        self.sock = ctx.wrap_socket(self.sock, server_side=True)
        self.rec.add("--", f"{self.name} tls")

    def close(self, record: bool = True) -> None:
        """Close our end; recorded only if the peer had not closed first (then ours is
        just the echo)."""
        if self.closed:
            return
        self.closed = True
        if record and not self.eof:
            self.rec.add("--", f"{self.name} close by {self.name_self}")
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    @property
    def name_self(self) -> str:
        return "client" if self.name == "client" else "server"


# --------------------------------------------------------------------------- scenarios
@dataclass
class Scenario:
    name: str
    description: str
    #: passdb extra fields besides proxy=y host=127.0.0.1 port={backend_port}
    fields: str = "nopassword=y"
    #: login_trusted_networks of the Dovecot proxy
    trusted: tuple[str, ...] = ()
    greeting: str = BACKEND_GREETING
    #: the reply lines to the proxy's LOGIN/AUTHENTICATE ({tag} = its tag); None: close
    #: the connection instead of answering
    login_reply: list[str] | None = field(default_factory=lambda: [LOGIN_OK])
    #: "listen": the capture backend; "closed": nothing listens on the backend port
    backend: str = "listen"
    #: the capture backend's TLS: "none", "starttls" (answers STARTTLS) or "implicit"
    backend_tls: str = "none"
    #: its certificate: "good" (localhost, 127.0.0.1, ::1) or "wrong" (wrong.example)
    backend_cert: str = "good"
    #: None: Dovecot is deterministic here. Otherwise a note on what varies between
    #: captures: only the first backend connection is then compared by --check.
    racy: str | None = None
    client: Callable[[Peer], None] | None = None


def client_login(login_line: str) -> Callable[[Peer], None]:
    """Greeting, one login command, then LOGOUT (answered by the backend after a
    successful login, by the proxy itself after a failed one)."""

    def run(c: Peer) -> None:
        c.expect()  # greeting
        tag = login_line.split(" ", 1)[0]
        c.send(login_line)
        c.until_tagged(tag)
        c.send("z LOGOUT")
        c.until_tagged("z")
        c.wait_eof()

    return run


def client_steps(*steps: str | tuple[str, str]) -> Callable[[Peer], None]:
    """Each step: a command line (waits for its tagged reply), or ("+", line) to wait for a
    continuation then send ``line`` (waiting for the tag of the command before it)."""

    def run(c: Peer) -> None:
        c.expect()
        pending_tag = None
        for step in steps:
            if isinstance(step, tuple):
                _, line = step
                got = c.expect()
                assert got is not None and got.startswith("+"), got
                c.send(line)
            else:
                if pending_tag:
                    c.until_tagged(pending_tag)
                c.send(step)
                pending_tag = step.split(" ", 1)[0]
        if pending_tag:
            c.until_tagged(pending_tag)
        c.send("z LOGOUT")
        c.until_tagged("z")
        c.wait_eof()

    return run


LOGIN = client_login("a LOGIN alice alicepw")
NO_SASL_IR_GREETING = (
    "* OK [CAPABILITY IMAP4rev1 LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN] Dovecot ready."
)
STARTTLS_GREETING = (
    "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS "
    "AUTH=PLAIN] Dovecot ready."
)
LOGINDISABLED_GREETING = (
    "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS "
    "LOGINDISABLED] Dovecot ready."
)
TRUSTED_ID = (
    'a ID ("name" "upstream-proxy" "x-originating-ip" "192.0.2.7" "x-originating-port" '
    '"4242" "x-connected-ip" "198.51.100.1" "x-connected-port" "993" "x-session-ext-id" '
    '"upstream-session-1" "x-forward-tenant" "blue")'
)

SCENARIOS: list[Scenario] = [
    Scenario(
        "login-nopassword",
        "Client LOGIN; the passdb accepts any password (nopassword=y) and the proxy forwards\n"
        "the client's password. Backend leg: ID then LOGIN pipelined in one write right\n"
        "after the banner; the backend's tagged OK [CAPABILITY ...] is relayed unchanged.",
        client=LOGIN,
    ),
    Scenario(
        "login-quoted-password",
        "Client password with a space, a quote and a backslash (sent as a quoted string):\n"
        "the proxy re-quotes it for the backend LOGIN.",
        client=client_login(r'a LOGIN "alice" "pa ss\"w\\d"'),
    ),
    Scenario(
        "client-login-literal",
        "Client sends the password as a synchronizing literal; the proxy answers '+ OK'\n"
        "itself (pre-login) and forwards a quoted string to the backend.",
        client=client_steps("a LOGIN alice {7}", ("+", "alicepw")),
    ),
    Scenario(
        "authenticate-plain-sasl-ir",
        "Client AUTHENTICATE PLAIN with an initial response (SASL-IR). Without proxy_mech\n"
        "the proxy still logs in to the backend with LOGIN.",
        client=client_login(f"a AUTHENTICATE PLAIN {b64(chr(0) + 'alice' + chr(0) + 'alicepw')}"),
    ),
    Scenario(
        "client-authenticate-plain-continuation",
        "Client AUTHENTICATE PLAIN without initial response: the proxy sends '+ ' and the\n"
        "client answers with the base64 line.",
        client=client_steps(
            "a AUTHENTICATE PLAIN", ("+", b64(chr(0) + "alice" + chr(0) + "alicepw"))
        ),
    ),
    Scenario(
        "proxy-mech-plain",
        "proxy_mech=plain and a SASL-IR backend: AUTHENTICATE PLAIN with the initial\n"
        "response authzid=authcid=destuser (alice\\0alice\\0password).",
        fields="nopassword=y proxy_mech=plain",
        client=LOGIN,
    ),
    Scenario(
        "capability-before-login",
        "Client sends CAPABILITY before logging in (answered by the proxy). After the\n"
        "backend login the proxy relays '* CAPABILITY <backend caps>' untagged, then the\n"
        "tagged OK.",
        client=client_steps("a CAPABILITY", "b LOGIN alice alicepw"),
    ),
    Scenario(
        "backend-ok-without-capability",
        "Backend answers 'L OK Logged in' with no CAPABILITY code: the proxy inserts\n"
        "[CAPABILITY <the backend's banner caps>].",
        login_reply=["{tag} OK Logged in"],
        client=LOGIN,
    ),
    Scenario(
        "backend-untagged-capability",
        "Backend sends an untagged '* CAPABILITY' during login, then 'L OK Logged in':\n"
        "the untagged line is not relayed, and its caps replace the banner's in the\n"
        "[CAPABILITY ...] the proxy inserts.",
        login_reply=["* CAPABILITY IMAP4rev1 X-UPDATED-CAPS", "{tag} OK Logged in"],
        client=LOGIN,
    ),
    Scenario(
        "backend-no",
        "Backend refuses the login with NO [AUTHENTICATIONFAILED]: the client gets the\n"
        "proxy's own NO [AUTHENTICATIONFAILED] text; no reconnect; the client stays\n"
        "connected pre-login (its LOGOUT is answered by the proxy).",
        login_reply=["{tag} NO [AUTHENTICATIONFAILED] Authentication failed."],
        client=LOGIN,
    ),
    Scenario(
        "backend-no-without-code",
        "Backend NO without a response code: mapped to NO [AUTHENTICATIONFAILED].",
        login_reply=["{tag} NO Invalid credentials from backend"],
        client=LOGIN,
    ),
    Scenario(
        "backend-bad",
        "Backend BAD to the LOGIN: mapped to NO [AUTHENTICATIONFAILED].",
        login_reply=["{tag} BAD Error in IMAP command received by server."],
        client=LOGIN,
    ),
    Scenario(
        "backend-no-other-code",
        "Backend NO with another response code ([CONTACTADMIN]): relayed verbatim with the\n"
        "client's tag.",
        login_reply=["{tag} NO [CONTACTADMIN] backend other code"],
        client=LOGIN,
    ),
    Scenario(
        "backend-unavailable",
        "Backend answers NO [UNAVAILABLE] every time: a temporary failure, so the proxy\n"
        "reconnects (login_proxy_max_reconnects=3, 1 s apart: 4 backend connections), then\n"
        "relays NO [UNAVAILABLE] with the backend's text.",
        login_reply=["{tag} NO [UNAVAILABLE] Backend temporarily busy."],
        client=LOGIN,
    ),
    Scenario(
        "backend-connect-refused",
        "Nothing listens on the backend port: connect() fails, the proxy retries 3 times\n"
        "1 s apart, then NO [UNAVAILABLE] Account is temporarily unavailable. There is no\n"
        "backend leg.",
        backend="closed",
        client=LOGIN,
    ),
    Scenario(
        "backend-disconnects-during-login",
        "Backend closes the connection instead of answering LOGIN: a connect-type failure,\n"
        "so the proxy reconnects (4 connections), then NO [UNAVAILABLE] Account is\n"
        "temporarily unavailable.",
        login_reply=None,
        client=LOGIN,
    ),
    Scenario(
        "backend-invalid-banner",
        "Backend greets with something that is not '* OK ': a protocol failure; the proxy\n"
        "reconnects (4 connections), then NO [UNAVAILABLE] Account is temporarily\n"
        "unavailable.",
        greeting="* BYE not a real IMAP server",
        client=LOGIN,
    ),
    Scenario(
        "backend-banner-without-capability",
        "Backend banner has no [CAPABILITY]: the proxy sends no ID (ID is only sent when the\n"
        "BANNER lists it) and asks 'C CAPABILITY' before logging in.",
        greeting="* OK Dovecot ready.",
        login_reply=["{tag} OK Logged in"],
        client=LOGIN,
    ),
    Scenario(
        "master-user",
        "passdb gives master= and pass=: the proxy logs in with AUTHENTICATE PLAIN,\n"
        "authzid = the user, authcid = the master user (alice\\0masteruser\\0masterpw).",
        fields="nopassword=y master=masteruser pass=masterpw",
        client=LOGIN,
    ),
    Scenario(
        "destuser",
        "destuser= renames the user on the backend LOGIN.",
        fields="nopassword=y destuser=alice@backend.example",
        client=LOGIN,
    ),
    Scenario(
        "forward-fields",
        "forward_<name> fields become x-forward-<name> pairs at the end of the ID, IMAP\n"
        "quoted (a value with a quote and a backslash).",
        fields='nopassword=y forward_foo=bar forward_quoted=a"b\\c',
        client=LOGIN,
    ),
    Scenario(
        "proxy-nopipelining",
        "proxy_nopipelining=y: ID alone, LOGIN only after the backend's 'I OK'.",
        fields="nopassword=y proxy_nopipelining=y",
        client=LOGIN,
    ),
    Scenario(
        "backend-no-sasl-ir",
        "proxy_mech=plain and a backend whose banner lacks SASL-IR: 'L AUTHENTICATE PLAIN',\n"
        "wait for '+ ', then the base64 line.",
        fields="nopassword=y proxy_mech=plain",
        greeting=NO_SASL_IR_GREETING,
        client=LOGIN,
    ),
    Scenario(
        "backend-untagged-alert-relayed",
        "An untagged '* OK [ALERT] ...' from the backend during login is relayed to the\n"
        "client before the tagged reply.",
        login_reply=["* OK [ALERT] backend alert line", LOGIN_OK],
        client=LOGIN,
    ),
    Scenario(
        "trusted-client-id",
        "The client (an upstream proxy) is in login_trusted_networks and sends ID with\n"
        "x-originating-*, x-connected-*, x-session-ext-id and x-forward-*: the proxy\n"
        "answers the ID itself and forwards those values in its own ID.",
        trusted=(f"{CLIENT_IP}/32",),
        client=client_steps(TRUSTED_ID, "b LOGIN alice alicepw"),
    ),
    Scenario(
        "backend-starttls",
        "starttls=yes: STARTTLS pipelined after ID, then (after 'S OK' and the TLS\n"
        "handshake, certificate verified against the test CA) the LOGIN inside TLS.",
        fields="nopassword=y starttls=yes",
        greeting=STARTTLS_GREETING,
        backend_tls="starttls",
        client=LOGIN,
    ),
    Scenario(
        "backend-starttls-not-advertised",
        "starttls=yes but the backend banner has no STARTTLS: a configuration error\n"
        "(REMOTE_CONFIG), so no reconnect and NO [SERVERBUG] to the client.",
        fields="nopassword=y starttls=yes",
        client=LOGIN,
    ),
    Scenario(
        "backend-logindisabled",
        "The backend banner says LOGINDISABLED and the link has no TLS: the proxy refuses\n"
        "to send the password (REMOTE_CONFIG, NO [SERVERBUG]).",
        greeting=LOGINDISABLED_GREETING,
        client=LOGIN,
    ),
    Scenario(
        "backend-ssl",
        "ssl=yes (port given explicitly): implicit TLS from the first byte, certificate\n"
        "verified against the test CA for host=127.0.0.1.",
        fields="nopassword=y ssl=yes",
        backend_tls="implicit",
        client=LOGIN,
    ),
    Scenario(
        "backend-ssl-wrong-cert",
        "ssl=yes and a backend certificate for wrong.example (same CA): the handshake\n"
        "completes, then the host name check fails; Dovecot counts that as an internal\n"
        "error: no retry, nothing sent to the backend, NO [UNAVAILABLE] Account is\n"
        "temporarily unavailable.",
        fields="nopassword=y ssl=yes",
        backend_tls="implicit",
        backend_cert="wrong",
        racy="Dovecot 2.3 sometimes reports this as an internal error ('Aborting due to\n"
        "internal error: Failed to start SSL handshake: ...': 1 backend connection, no\n"
        "retry) and sometimes as a connect failure ('Disconnected by server: ... SSL\n"
        "certificate doesn't match ...': retried, up to 4 connections), depending on\n"
        "whether its handshake finished synchronously. The client leg is the same either\n"
        "way, and no P>S line is ever sent: assert those, not the number of attempts.",
        client=LOGIN,
    ),
    Scenario(
        "backend-ssl-any-cert",
        "ssl=any-cert accepts the wrong.example certificate: the login goes through\n"
        "inside TLS.",
        fields="nopassword=y ssl=any-cert",
        backend_tls="implicit",
        backend_cert="wrong",
        client=LOGIN,
    ),
    Scenario(
        "untrusted-client-id",
        "The same ID from a client NOT in login_trusted_networks: answered, but its x-*\n"
        "values are ignored; the proxy forwards the real client address.",
        client=client_steps(TRUSTED_ID, "b LOGIN alice alicepw"),
    ),
]


# --------------------------------------------------------------------- capture backend
def split_command(line: str) -> tuple[str, str, str]:
    parts = line.split(" ", 2)
    return parts[0], (parts[1].upper() if len(parts) > 1 else ""), (parts[2] if len(parts) > 2 else "")


def handshake(peer: Peer, ctx: ssl.SSLContext, *, server_speaks_next: bool) -> bool:
    """Server-side TLS handshake. Returns False if the proxy rejected our certificate.

    With TLS 1.3 the server's side of the handshake completes before the client has
    checked the certificate, and Dovecot checks the host name only after the handshake,
    then just closes. So when the server speaks next (implicit TLS: the greeting), wait a
    moment for that close, to record it the same way every time instead of racing the
    greeting against it.
    """
    try:
        peer.start_tls(ctx)
    except (ssl.SSLError, OSError) as e:
        peer.rec.add("--", f"{peer.name} tls failed")
        peer.rec.add("#", f"(server-side handshake error: {type(e).__name__})")
        peer.eof = True
        peer.close(record=False)
        return False
    if server_speaks_next and select.select([peer.sock], [], [], 0.3)[0]:
        try:
            data = peer.sock.recv(65536)
        except (ssl.SSLError, OSError):
            data = b""
        if not data:
            peer.rec.add("--", f"{peer.name} close by {peer.peer_name}")
            peer.eof = True
            peer.close(record=False)
            return False
        peer.buf += data  # not expected: in IMAP the server speaks first
    return True


def backend_session(peer: Peer, sc: Scenario, tls_ctx: ssl.SSLContext | None) -> None:
    """Answer the proxy as Dovecot's imap backend would, as the scenario says."""
    if sc.backend_tls == "implicit":
        assert tls_ctx is not None
        if not handshake(peer, tls_ctx, server_speaks_next=True):
            return
    peer.send(sc.greeting)
    greeting_caps = re.match(r"\* OK \[CAPABILITY ([^\]]*)\]", sc.greeting)
    caps = greeting_caps.group(1) if greeting_caps else BACKEND_CAPS
    logged_in = False
    while True:
        line = peer.expect()
        if line is None:
            return
        tag, cmd, rest = split_command(line)
        if logged_in:
            if cmd == "LOGOUT":
                peer.send("* BYE Logging out", f"{tag} OK Logout completed.")
                # Same bytes as closing at once; the pause only lets the relayed BYE reach
                # the client first, so re-captures interleave the legs the same way.
                time.sleep(0.05)
                peer.close()
                return
            peer.send(f"{tag} OK {cmd.capitalize()} completed.")
        elif cmd == "ID":
            peer.send('* ID ("name" "Dovecot")', f"{tag} OK ID completed.")
        elif cmd == "STARTTLS":
            if sc.backend_tls != "starttls" or tls_ctx is None:
                peer.send(f"{tag} BAD TLS support isn't enabled.")
                continue
            peer.send(f"{tag} OK Begin TLS negotiation now.")
            if not handshake(peer, tls_ctx, server_speaks_next=False):
                return
        elif cmd == "CAPABILITY":
            peer.send(
                f"* CAPABILITY {caps}",
                f"{tag} OK Pre-login capabilities listed, post-login capabilities have more.",
            )
        elif cmd in ("LOGIN", "AUTHENTICATE"):
            if cmd == "AUTHENTICATE" and len(rest.split(" ")) < 2:
                peer.send("+ ")
                if peer.expect() is None:
                    return
            if sc.login_reply is None:
                peer.close()
                return
            replies = [r.format(tag=tag) for r in sc.login_reply]
            peer.send(*replies)
            logged_in = replies[-1].startswith(f"{tag} OK")
        else:
            peer.send(f"{tag} BAD Error in IMAP command received by server.")


class CaptureBackend:
    def __init__(self, sc: Scenario, rec: Recorder, tls_ctx: ssl.SSLContext | None) -> None:
        self.sc, self.rec, self.tls_ctx = sc, rec, tls_ctx
        self.sock = socket.socket()
        self.sock.bind((BACKEND_IP, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.errors: list[BaseException] = []
        self.peers: list[Peer] = []
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, addr = self.sock.accept()
            except OSError:
                return
            if os.environ.get("CAPTURE_DEBUG"):
                print(f"[debug] {self.sc.name}: accepted {addr} on {conn.getsockname()}", file=sys.stderr)
            self.connections += 1
            self.rec.add("--", f"backend connect {self.connections}")
            peer = Peer(conn, self.rec, out="S>P", inp="P>S", name="backend", peer="proxy")
            self.peers.append(peer)
            t = threading.Thread(target=self._serve, args=(peer,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, peer: Peer) -> None:
        try:
            backend_session(peer, self.sc, self.tls_ctx)
        except BaseException as e:  # surfaced by close()
            self.errors.append(e)

    def close(self) -> None:
        # shutdown() first: close() alone does not wake a thread blocked in accept(), and
        # that thread's reference kept the listener alive on its port, where a LATER
        # scenario's backend could be bound too and steal its connections.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._accepter.join(timeout=10)
        self.sock.close()
        for t in self._threads:
            t.join(timeout=10)
        for p in self.peers:
            p.close(record=False)
        if self.errors:
            raise self.errors[0]


# ----------------------------------------------------------------------- normalising
SESSION_RE = re.compile(r'"x-session-id" "([A-Za-z0-9+/]{16}|[A-Za-z0-9+/]{32})"')
GREETING_RE = re.compile(r"^(\* OK (?:\[[^\]]*\] )?)(.*)$")


def normalise(
    lines: list[tuple[str, str]], *, client_port: int, proxy_port: int
) -> list[tuple[str, str]]:
    session = None
    for kind, text in lines:
        m = SESSION_RE.search(text)
        if kind == "P>S" and m:
            session = m.group(1)
            break
    subs = [
        (f'"{CLIENT_IP}"', '"{client_ip}"'),
        (f'"{PROXY_IP}"', '"{proxy_ip}"'),
        (f'"{client_port}"', '"{client_port}"'),
        (f'"{proxy_port}"', '"{proxy_port}"'),
    ]
    if session:
        subs.insert(0, (session, "{session}"))
    out = []
    greeted = False
    for kind, text in lines:
        for old, new in subs:
            text = text.replace(old, new)
        if kind == "P>C" and not greeted:
            greeted = True
            text = GREETING_RE.sub(r"\1{greeting}", text)
        out.append((kind, text))
    return out


LOG_RES = [
    (re.compile(r"^\w{3} [ \d]\d \d\d:\d\d:\d\d "), ""),
    (re.compile(r"\b\d+\.\d+ secs\b"), "{secs} secs"),
    (re.compile(r"\bafter \d+ secs\b"), "after {n} secs"),
    (re.compile(r"\bin \d+ secs\b"), "in {n} secs"),
    (re.compile(r"\(\d+s idle"), "({n}s idle"),
    (re.compile(r"duration=\d+s"), "duration={n}s"),
    (re.compile(r"local=[\d.]+:\d+"), "local={local}"),
    (re.compile(r"session=<[^>]*>"), "session=<{session}>"),
    (re.compile(r"mpid=\d+"), "mpid={mpid}"),
]


def proxy_log(text: str, client_port: int, backend_port: int) -> list[str]:
    """The Dovecot proxy's imap-login log lines, normalised (informative comments)."""
    out = []
    for line in text.splitlines():
        if "imap-login:" not in line or "no auth attempts" in line:
            continue
        for rx, new in LOG_RES:
            line = rx.sub(new, line)
        line = (
            line.replace(f"{CLIENT_IP}:{client_port}", "{client_ip}:{client_port}")
            .replace(f"{BACKEND_IP}:{backend_port}", BACKEND_IP + ":{backend_port}")
            .replace(f"{BACKEND_IP}, {backend_port}", BACKEND_IP + ", {backend_port}")
            .replace(f"rip={CLIENT_IP}", "rip={client_ip}")
            .replace(f"lip={PROXY_IP}", "lip={proxy_ip}")
        )
        out.append(line)
    return out


# --------------------------------------------------------------------------- running
def dovecot_version() -> str:
    out = subprocess.run(["dovecot", "--version"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def server_context(tls: TLSFiles, which: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if which == "wrong":
        ctx.load_cert_chain(tls.wrong_cert, tls.wrong_key)
    else:
        ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


def capture(sc: Scenario, tls: TLSFiles) -> str:
    rec = Recorder()
    backend: CaptureBackend | None = None
    tls_ctx = server_context(tls, sc.backend_cert) if sc.backend_tls != "none" else None
    if sc.backend == "listen":
        backend = CaptureBackend(sc, rec, tls_ctx)
        backend_port = backend.port
    else:
        backend_port = free_port(BACKEND_IP)  # nothing listens there: connect() refused
    passdb = f"proxy=y host={BACKEND_IP} port={backend_port} {sc.fields}".strip()
    proxy = DovecotBackend.proxy(
        backend_port,
        backend_host=BACKEND_IP,
        fields=sc.fields,
        users={"alice": ""},
        trusted_networks=sc.trusted,
        protocols=("imap",),
        host=PROXY_IP,
        # The CA that signed the capture backend's certificates (ssl=yes/starttls=yes).
        ssl_client_ca=tls.ca,
    )
    client: Peer | None = None
    try:
        proxy.start()
        # The readiness probe connected once; start the record from a clean slate.
        time.sleep(0.1)
        s = socket.socket()
        s.bind((CLIENT_IP, 0))
        s.settimeout(LINE_TIMEOUT)
        s.connect((PROXY_IP, proxy.imap_port))
        s.settimeout(None)
        client_port = s.getsockname()[1]
        client = Peer(s, rec, out="C>P", inp="P>C", name="client", peer="proxy")
        assert sc.client is not None
        sc.client(client)
        client.close()
        if backend:
            backend.close()
        time.sleep(0.2)  # let the log process write the last lines
        log = proxy_log(proxy.log_text(), client_port, backend_port)
    finally:
        if client:
            client.close(record=False)
        if backend:
            try:
                backend.close()
            except BaseException:
                pass
        proxy.stop()

    lines = normalise(rec.lines(), client_port=client_port, proxy_port=proxy.imap_port)
    head = [f"# scenario: {sc.name}"]
    head += [f"# {d}" for d in sc.description.splitlines()]
    head.append("# passdb: " + passdb.replace(f"port={backend_port}", "port={backend_port}"))
    head.append(f"# login_trusted_networks: {' '.join(sc.trusted)}".rstrip())
    if sc.backend_tls != "none":
        name = "wrong.example" if sc.backend_cert == "wrong" else "localhost 127.0.0.1 ::1"
        head.append(
            f"# backend tls: {sc.backend_tls}, certificate for {name}, signed by the CA in "
            "the proxy's ssl_client_ca_file"
        )
    head.append(
        f"# addresses: client {CLIENT_IP} -> proxy {PROXY_IP} -> backend "
        f"{BACKEND_IP}:{{backend_port}}"
    )
    if sc.racy:
        head += [f"# racy: {ln}" if i == 0 else f"# {ln}" for i, ln in enumerate(sc.racy.splitlines())]
    head.append(f"# captured from Dovecot {dovecot_version()} imap-login by spec/capture.py")
    body = []
    for kind, text in lines:
        if kind == "--":
            body.append(f"-- {text}")
        elif kind == "#":
            body.append(f"# {text}")
        else:
            body.append(f"{kind}: {text}")
    tail = ["# proxy log (informative, normalised):"] + [f"# log: {ln}" for ln in log]
    return "\n".join(head + body + tail) + "\n"


def legs(text: str) -> dict[str, list[str]]:
    """The transcript split into its two legs, each in its own order. Only the order
    within a leg is meaningful; how the legs interleave depends on timing."""
    out: dict[str, list[str]] = {"client": [], "backend": []}
    for ln in text.splitlines():
        if ln.startswith(("C>P: ", "P>C: ", "-- client ")):
            out["client"].append(ln)
        elif ln.startswith(("P>S: ", "S>P: ", "-- backend ")):
            out["backend"].append(ln)
    return out


def first_connection(leg: list[str]) -> list[str]:
    """The backend leg up to (not including) its second 'connect' event."""
    out: list[str] = []
    for ln in leg:
        if ln.startswith("-- backend connect ") and out:
            break
        out.append(ln)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenarios", nargs="*", help="names (default: all)")
    ap.add_argument("--check", action="store_true", help="compare, do not write")
    ap.add_argument("--list", action="store_true", help="list scenario names")
    args = ap.parse_args(argv)
    if args.list:
        for sc in SCENARIOS:
            print(sc.name)
        return 0
    reason = dovecot_missing_reason()
    if reason:
        print(f"capture.py: {reason}", file=sys.stderr)
        return 2
    by_name = {sc.name: sc for sc in SCENARIOS}
    unknown = [n for n in args.scenarios if n not in by_name]
    if unknown:
        print(f"capture.py: unknown scenario(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    chosen = [by_name[n] for n in args.scenarios] if args.scenarios else SCENARIOS
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    status = 0
    certdir = tempfile.TemporaryDirectory(prefix="capture-tls-")
    tls = make_tls_files(certdir.name)
    for sc in chosen:
        t0 = time.monotonic()
        text = capture(sc, tls)
        path = OUT_DIR / f"{sc.name}.txt"
        if args.check:
            old = path.read_text() if path.exists() else ""
            old_legs, new_legs = legs(old), legs(text)
            if sc.racy:
                old_legs["backend"] = first_connection(old_legs["backend"])
                new_legs["backend"] = first_connection(new_legs["backend"])
            if old_legs != new_legs:
                status = 1
                print(f"DIFFERS {path.relative_to(REPO)}")
                for leg in ("client", "backend"):
                    sys.stdout.writelines(
                        difflib.unified_diff(
                            [ln + "\n" for ln in old_legs[leg]],
                            [ln + "\n" for ln in new_legs[leg]],
                            f"committed ({leg} leg)",
                            f"captured ({leg} leg)",
                        )
                    )
            else:
                print(f"same    {path.relative_to(REPO)} ({time.monotonic() - t0:.1f}s)")
        else:
            path.write_text(text)
            print(f"wrote   {path.relative_to(REPO)} ({time.monotonic() - t0:.1f}s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
