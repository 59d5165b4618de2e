"""Replay Dovecot's own proxy transcripts (spec/imap/*.txt) against trio-mailproxy.

Each transcript was captured from Dovecot 2.3 acting as the login proxy (spec/capture.py),
so this holds us to Dovecot, not to ourselves. For each one the real daemon is started
with the transcript's passdb fields; a scripted client plays the `C>P` lines and checks
every `P>C` line, and a scripted backend plays the `S>P` lines and checks every `P>S`
line, connection by connection (reconnects included), over real loopback sockets, with
real TLS where the transcript has `-- backend tls`. Order is checked within each leg.
A leg that waits for a line the proxy never sends fails on its deadline.

Known, deliberate differences are listed in DEVIATIONS with the reason; everything else
must match byte for byte (after the placeholders are filled in).
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailproxy import __version__
from tests.support import transcripts
from tests.support.net import free_port
from tests.support.proxy import MailProxy

TRANSCRIPTS = transcripts.all_transcripts()
CLIENT_IP, PROXY_IP, BACKEND_IP = "127.0.0.2", "127.0.0.3", "127.0.0.1"
GREETING = "trio-mailproxy ready."
LEG_TIMEOUT = 20.0

# The proxy's own identity is ours, not Dovecot's: its ID reply names trio-mailproxy.
IDENTITY = {
    '* ID ("name" "Dovecot")': f'* ID ("name" "trio-mailproxy" "version" "{__version__}")',
}

# scenario → (what differs, why). Replayed up to the first difference is not enough:
# these scenarios are checked by the dedicated tests named in the reason instead.
DEVIATIONS: dict[str, str] = {
    "backend-ssl-wrong-cert": (
        "Dovecot opens a second backend connection after the failed certificate check "
        "and leaves it open until the client leaves; we treat a certificate that does not "
        "verify as final (no retry) and close at once. The client-visible reply is the "
        "same (tests/e2e/test_imap_proxy.py::test_ssl_yes_refuses_a_backend_whose_name_"
        "does_not_match, tests/io/test_session.py::test_backend_tls_name_mismatch_...)."),
}


@dataclass
class Script:
    """A transcript as the two scripted peers play it."""
    name: str
    passdb: str
    trusted: list[str]
    backend_cert_wrong: bool
    client: list[tuple[str, str]] = field(default_factory=list)
    backend: list[list[tuple[str, str]]] = field(default_factory=list)


# Step kinds, from each scripted peer's point of view.
CLIENT_STEPS = {"C>P": "send", "P>C": "expect", "close": "eof"}
BACKEND_STEPS = {"S>P": "send", "P>S": "expect", "tls": "tls"}


def parse(path: Path) -> Script:
    t = transcripts.parse(path)
    script = Script(t.name, t.headers.get("passdb", ""), t.trusted_networks,
                    "wrong.example" in t.headers.get("backend tls", ""))
    for kind, text in t.client:
        step = CLIENT_STEPS[kind]
        script.client.append((step, IDENTITY.get(text, text) if step == "expect" else text))
    for connection in t.backend:
        steps = []
        for kind, text in connection:
            if kind == "close":
                steps.append(("close" if text == "by server" else "eof", ""))
            else:
                steps.append((BACKEND_STEPS[kind], text))
        script.backend.append(steps)
    return script


def pattern(template: str, values: dict[str, str]) -> re.Pattern[str]:
    """A transcript line → regex: placeholders become their values (or a session id)."""
    out = re.escape(template)
    for name, value in values.items():
        out = out.replace(re.escape("{" + name + "}"), re.escape(value))
    out = out.replace(re.escape("{session}"), "[A-Za-z0-9+/]{16}")
    return re.compile(out)


class Leg:
    """One side's socket with a line reader and a deadline."""

    def __init__(self, sock: socket.socket | ssl.SSLSocket) -> None:
        self.sock = sock
        self.buf = b""
        sock.settimeout(LEG_TIMEOUT)

    def line(self) -> str | None:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line.decode("utf-8", "surrogateescape")

    def eof(self) -> bool:
        if self.buf:
            return False
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, ssl.SSLError):
            return True


def run_backend(t: Script, srv: socket.socket, values: dict[str, str],
                ctx: ssl.SSLContext, errors: list[str]) -> None:
    try:
        for n, steps in enumerate(t.backend, start=1):
            conn, _ = srv.accept()
            leg = Leg(conn)
            for i, (kind, text) in enumerate(steps):
                where = f"backend connection {n}, step {i + 1}"
                if kind == "send":
                    leg.sock.sendall(text.encode("utf-8", "surrogateescape") + b"\r\n")
                elif kind == "expect":
                    got = leg.line()
                    if got is None or not pattern(text, values).fullmatch(got):
                        errors.append(f"{where}: expected P>S {text!r}, got {got!r}")
                        return
                elif kind == "tls":
                    leg = Leg(ctx.wrap_socket(leg.sock, server_side=True))
                elif kind == "close":
                    leg.sock.close()
                elif kind == "eof":
                    if not leg.eof():
                        errors.append(f"{where}: expected the proxy to close the backend "
                                      f"connection, got {leg.buf!r}")
                        return
            leg.sock.close()
    except (OSError, ssl.SSLError) as e:
        errors.append(f"backend leg: {type(e).__name__}: {e}")


def run_client(t: Script, port: int, values: dict[str, str], errors: list[str]) -> None:
    sock = socket.create_connection((PROXY_IP, port), LEG_TIMEOUT,
                                    source_address=(CLIENT_IP, 0))
    values["client_port"] = str(sock.getsockname()[1])
    leg = Leg(sock)
    try:
        for i, (kind, text) in enumerate(t.client):
            where = f"client step {i + 1}"
            if kind == "send":
                sock.sendall(text.encode("utf-8", "surrogateescape") + b"\r\n")
            elif kind == "expect":
                got = leg.line()
                if got is None or not pattern(text, values).fullmatch(got):
                    errors.append(f"{where}: expected P>C {text!r}, got {got!r}")
                    return
            elif kind == "eof":
                if not leg.eof():
                    errors.append(f"{where}: expected the proxy to close, got {leg.buf!r}")
                    return
    except OSError as e:
        errors.append(f"client leg: {type(e).__name__}: {e}")
    finally:
        sock.close()


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
def test_transcript(path: Path, tls_certs) -> None:  # type: ignore[no-untyped-def]
    t = parse(path)
    if t.name in DEVIATIONS:
        pytest.xfail(DEVIATIONS[t.name])
    srv = socket.socket()
    srv.bind((BACKEND_IP, 0))
    srv.listen(8)
    backend_port = srv.getsockname()[1]
    if not t.backend:
        srv.close()   # connect-refused: nothing listens there
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if t.backend_cert_wrong:
        ctx.load_cert_chain(tls_certs.wrong_cert, tls_certs.wrong_key)
    else:
        ctx.load_cert_chain(tls_certs.cert, tls_certs.key)
    proxy_port = free_port(PROXY_IP)
    values = {"greeting": GREETING, "client_ip": CLIENT_IP, "proxy_ip": PROXY_IP,
              "proxy_port": str(proxy_port), "backend_port": str(backend_port)}
    passdb = t.passdb.replace("{backend_port}", str(backend_port))
    passdb = passdb.replace("\\", "\\\\").replace('"', '\\"')   # a TOML basic string
    trusted = ", ".join(f'"{n}"' for n in t.trusted)
    errors: list[str] = []
    with MailProxy(f'[[passdb]]\ndriver = "static"\nargs = "{passdb}"\n', host=PROXY_IP,
                   ports=[proxy_port], ca_file=tls_certs.ca,
                   top=f"trusted_networks = [{trusted}]") as proxy:
        backend = threading.Thread(target=run_backend,
                                   args=(t, srv, values, ctx, errors), daemon=True)
        backend.start()
        run_client(t, proxy_port, values, errors)
        backend.join(LEG_TIMEOUT)
        srv.close()
        assert not backend.is_alive() or errors, "backend leg did not finish"
        assert not errors, "\n".join(errors) + "\n--- proxy log:\n" + proxy.log_text()


def test_every_transcript_parses() -> None:
    assert len(TRANSCRIPTS) >= 12
    for path in TRANSCRIPTS:
        t = parse(path)
        assert t.passdb, path.name
        assert t.client and t.client[0][0] == "expect", path.name
