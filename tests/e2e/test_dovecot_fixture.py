"""Proves the private-Dovecot fixture the other e2e tests stand on.

If these fail, every proxy e2e failure is suspect: the backend itself is broken. Each
check uses only the standard library clients (imaplib, poplib, ssl) against the fixture.
"""

from __future__ import annotations

import imaplib
import poplib
import socket
import ssl
import time

import pytest

from tests.support.dovecot import DovecotBackend, live_group_members
from tests.support.tls import TLSFiles

MESSAGE = b"From: test@example.org\r\nSubject: fixture check\r\n\r\nhello maildir\r\n"


def _ctx(tls_certs: TLSFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls_certs.ca))


def test_login_as_alice(dovecot_backend: DovecotBackend) -> None:
    imap = imaplib.IMAP4(dovecot_backend.host, dovecot_backend.imap_port, timeout=10)
    try:
        assert imap.welcome.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
        typ, _ = imap.login("alice", "alicepw")
        assert typ == "OK"
    finally:
        imap.logout()


def test_wrong_password_refused(dovecot_backend: DovecotBackend) -> None:
    imap = imaplib.IMAP4(dovecot_backend.host, dovecot_backend.imap_port, timeout=10)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            imap.login("alice", "not-the-password")
    finally:
        imap.logout()


def test_append_lands_in_maildir(dovecot_backend: DovecotBackend) -> None:
    imap = imaplib.IMAP4(dovecot_backend.host, dovecot_backend.imap_port, timeout=10)
    try:
        imap.login("bob", "bobpw")
        typ, _ = imap.append("INBOX", None, None, MESSAGE)
        assert typ == "OK"
    finally:
        imap.logout()
    files = list((dovecot_backend.maildir("bob") / "new").iterdir()) + list(
        (dovecot_backend.maildir("bob") / "cur").iterdir()
    )
    # Dovecot stores Maildir files with LF line ends.
    assert [f.read_bytes() for f in files] == [MESSAGE.replace(b"\r\n", b"\n")]


def test_imaps_with_trustme_ca(dovecot_backend: DovecotBackend, tls_certs: TLSFiles) -> None:
    assert dovecot_backend.imaps_port
    imap = imaplib.IMAP4_SSL(
        "127.0.0.1", dovecot_backend.imaps_port, ssl_context=_ctx(tls_certs), timeout=10
    )
    try:
        assert imap.login("alice", "alicepw")[0] == "OK"
    finally:
        imap.logout()
    # The same certificate also verifies by name: proxies may connect to "localhost".
    with socket.create_connection(("127.0.0.1", dovecot_backend.imaps_port), timeout=10) as raw:
        with _ctx(tls_certs).wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.recv(4096).startswith(b"* OK ")


def test_starttls_on_plain_port(dovecot_backend: DovecotBackend, tls_certs: TLSFiles) -> None:
    imap = imaplib.IMAP4(dovecot_backend.host, dovecot_backend.imap_port, timeout=10)
    try:
        assert "STARTTLS" in imap.capabilities
        imap.starttls(ssl_context=_ctx(tls_certs))
        assert imap.login("alice", "alicepw")[0] == "OK"
    finally:
        imap.logout()


def test_wrong_cert_fails_verification(
    dovecot_factory, tls_certs: TLSFiles  # type: ignore[no-untyped-def]
) -> None:
    # The wrong.example certificate is signed by the same CA, so only the name check can
    # refuse it: this is what a proxy's ssl=yes must do too.
    wrong = dovecot_factory(
        {"alice": "alicepw"},
        protocols=("imap",),
        tls_cert=tls_certs.wrong_cert,
        tls_key=tls_certs.wrong_key,
    )
    with pytest.raises(ssl.SSLCertVerificationError, match="match|mismatch"):
        imaplib.IMAP4_SSL("127.0.0.1", wrong.imaps_port, ssl_context=_ctx(tls_certs), timeout=10)


def test_log_shows_client_address(dovecot_backend: DovecotBackend) -> None:
    imap = imaplib.IMAP4(dovecot_backend.host, dovecot_backend.imap_port, timeout=10)
    imap.login("alice", "alicepw")
    imap.logout()
    log = _wait_for_log(dovecot_backend, "Login: user=<alice>")
    line = next(ln for ln in log.splitlines() if "Login: user=<alice>" in ln)
    assert "rip=127.0.0.1" in line and "session=<" in line


def test_trusted_id_overrides_client_address(dovecot_backend: DovecotBackend) -> None:
    # login_trusted_networks = 127.0.0.0/8: the backend believes a proxy's ID fields. This
    # is the mechanism the proxy's forwarding tests rely on. imap_id_log = * logs them.
    imap = imaplib.IMAP4(dovecot_backend.host, dovecot_backend.imap_port, timeout=10)
    try:
        imaplib.Commands["ID"] = ("NONAUTH", "AUTH", "SELECTED")
        typ, _ = imap._simple_command(
            "ID", '("x-originating-ip" "192.0.2.7" "x-originating-port" "4242")'
        )
        assert typ == "OK"
        imap.login("alice", "alicepw")
    finally:
        imap.logout()
    log = _wait_for_log(dovecot_backend, "Login: user=<alice>")
    assert "ID sent: x-originating-ip=192.0.2.7, x-originating-port=4242" in log
    login = next(ln for ln in log.splitlines() if "Login: user=<alice>" in ln)
    assert "rip=192.0.2.7" in login


def test_master_user_login(dovecot_backend: DovecotBackend) -> None:
    imap = imaplib.IMAP4(dovecot_backend.host, dovecot_backend.imap_port, timeout=10)
    try:
        assert imap.login("alice*master", "masterpw")[0] == "OK"
    finally:
        imap.logout()
    assert "Master user logging in as alice" in _wait_for_log(dovecot_backend, "Master user")


def test_pop3_login(dovecot_backend: DovecotBackend) -> None:
    assert dovecot_backend.pop3_port
    pop = poplib.POP3(dovecot_backend.host, dovecot_backend.pop3_port, timeout=10)
    try:
        pop.user("bob")
        assert pop.pass_("bobpw").startswith(b"+OK")
    finally:
        pop.quit()


def test_dovecot_as_proxy(dovecot_backend: DovecotBackend, dovecot_factory) -> None:  # type: ignore[no-untyped-def]
    # Dovecot itself as the reference login proxy (spec/capture.py uses the same helper).
    proxy = dovecot_factory.proxy(
        dovecot_backend.imap_port, protocols=("imap",), fields="nopassword=y forward_foo=bar"
    )
    imap = imaplib.IMAP4(proxy.host, proxy.imap_port, timeout=10)
    try:
        assert imap.login("alice", "alicepw")[0] == "OK"
    finally:
        imap.logout()
    log = _wait_for_log(dovecot_backend, "x-forward-foo=bar")
    assert "x-proxy-ttl=4" in log
    assert "Started proxying to <127.0.0.1>" in _wait_for_log(proxy, "Started proxying")


def test_stop_kills_every_process(require_dovecot: None) -> None:
    backend = DovecotBackend({"alice": "alicepw"}, protocols=("imap",)).start()
    pgid = backend.pid
    assert pgid is not None and backend.dir is not None
    workdir = backend.dir
    # Hold a logged-in session open so a mail process (imap) exists at stop time.
    imap = imaplib.IMAP4(backend.host, backend.imap_port, timeout=10)
    imap.login("alice", "alicepw")
    backend.stop()
    backend.stop()  # idempotent
    assert not workdir.exists()
    assert live_group_members(pgid) == []
    with pytest.raises((OSError, imaplib.IMAP4.abort)):
        imap.noop()
        imap.noop()


def _wait_for_log(backend: DovecotBackend, needle: str, timeout: float = 5.0) -> str:
    # Dovecot's log process writes asynchronously: the line may land a moment after the
    # client saw the reply.
    deadline = time.monotonic() + timeout
    while True:
        text = backend.log_text()
        if needle in text or time.monotonic() > deadline:
            assert needle in text, f"{needle!r} not in log:\n{text}"
            return text
        time.sleep(0.05)
