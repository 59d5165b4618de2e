"""One session driven on Trio memory streams: login deadline, STARTTLS boundaries.

No sockets: the client and the backend are the other ends of memory stream pairs, and
TLS is real (trio.SSLStream with trustme certificates) over them.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme

from mailproxy.config import load_config
from mailproxy.io import backend as backend_mod
from mailproxy.io.server import build_context
from mailproxy.io.session import ClientSession, opening_greeting
from mailproxy.io.tls import BackendContexts
from mailproxy.protocols import _events as ev
from mailproxy.protocols import imap
from mailproxy.protocols._secret import Secret
from mailproxy.protocols.forwarding import ForwardedFields


def write_config(tmp_path: Path, extra: str = "", *, top: str = "",
                 auth: str = "disable_plaintext_auth = false\nfailure_delay = 0") -> Path:
    path = tmp_path / "proxy.toml"
    path.write_text(f"""{top}
[[listener]]
protocol = "imap"
bind = "127.0.0.1:10143"
tls = "none"
[[passdb]]
driver = "static"
args = "proxy=y host=127.0.0.1 port=1143 nopassword=y"
[auth]
{auth}
{extra}
""")
    return path


async def read_line(stream: trio.abc.ReceiveStream, buf: bytearray) -> bytes:
    while b"\r\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            raise EOFError(bytes(buf))
        buf += data
    line, _, rest = bytes(buf).partition(b"\r\n")
    buf[:] = rest
    return line


async def client_and_session(tmp_path: Path, extra: str) -> tuple[trio.abc.Stream,
                                                                  ClientSession]:
    """A session on a memory stream, from 127.0.0.9 to our listener; the client end."""
    config = load_config(write_config(tmp_path, extra))
    ctx = await build_context(config)
    client, proxy_side = trio.testing.memory_stream_pair()
    return client, ClientSession(ctx, config.listeners[0], proxy_side, ("127.0.0.9", 5555),
                                 ("127.0.0.1", 10143))


async def test_the_accept_loops_greeting_is_the_one_the_session_would_send(
        tmp_path: Path) -> None:
    # Daemon.admit() sends opening_greeting() before the session exists, and the session
    # then skips that many bytes of its own greeting: they must be the same bytes, for
    # secured clients (same address as the listener, trusted network) and others.
    # disable_plaintext_auth is left at its default (yes): the greetings differ
    config = load_config(write_config(tmp_path, top='trusted_networks = ["127.0.0.3/32"]',
                                      auth=""))
    ctx = await build_context(config)
    li = config.listeners[0]
    login_disabled = set()
    for peer in ("127.0.0.1", "127.0.0.2", "127.0.0.3", "::ffff:127.0.0.2", "::ffff:127.0.0.3"):
        session = ClientSession(ctx, li, trio.testing.memory_stream_pair()[1], (peer, 5555),
                                ("127.0.0.1", 10143))
        own = session.new_server_connection().data_to_send()
        assert opening_greeting(ctx, li, peer, "127.0.0.1") == own, peer
        login_disabled.add(b"LOGINDISABLED" in own)
    assert login_disabled == {True, False}     # both kinds of greeting were compared


async def test_silent_client_gets_bye_at_the_login_deadline(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    client, session = await client_and_session(tmp_path, "[limits]\nlogin_timeout = 30")
    buf = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        assert (await read_line(client, buf)).startswith(b"* OK [CAPABILITY IMAP4rev1")
        started = trio.current_time()
        assert await read_line(client, buf) == b"* BYE Disconnected for inactivity."
        assert 30 <= trio.current_time() - started < 31


async def test_the_deadline_also_covers_a_client_stuck_mid_literal(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    client, session = await client_and_session(tmp_path, "[limits]\nlogin_timeout = 10")
    buf = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        await read_line(client, buf)
        await client.send_all(b"a LOGIN {5}\r\n")
        assert (await read_line(client, buf)).startswith(b"+ ")
        await client.send_all(b"ab")
        assert await read_line(client, buf) == b"* BYE Disconnected for inactivity."


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def contexts_trusting(ca: trustme.CA) -> BackendContexts:
    c = BackendContexts(None)
    ca.configure_trust(c.verify)
    return c


async def test_backend_starttls_injection_is_discarded(ca: trustme.CA) -> None:
    """A backend (or a man in the middle) that sends a fake login success in the same
    packet as its STARTTLS OK must not log the client in: bytes before the handshake that
    follow the OK are thrown away, and only what comes over TLS counts."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("backend.test").configure_cert(server_ctx)
    proxy_end, backend_end = trio.testing.memory_stream_pair()
    seen: list[bytes] = []

    async def fake_backend() -> None:
        buf = bytearray()
        await backend_end.send_all(b"* OK [CAPABILITY IMAP4rev1 STARTTLS ID] ready\r\n")
        while not seen or seen[-1] != b"S STARTTLS":   # ID, then STARTTLS (pipelined)
            seen.append(await read_line(backend_end, buf))
        await backend_end.send_all(b"* ID NIL\r\nI OK ID completed.\r\n"
                                   b"S OK Begin TLS negotiation now.\r\n"
                                   b"L OK [CAPABILITY IMAP4rev1] injected\r\n")
        tls = trio.SSLStream(backend_end, server_ctx, server_side=True)
        await tls.do_handshake()
        buf.clear()
        while True:
            line = await read_line(tls, buf)
            seen.append(line)
            if line.startswith(b"L "):
                break
        await tls.send_all(b"L NO [AUTHENTICATIONFAILED] real answer\r\n")

    async def connect(ip: str, port: int, source: str | None) -> trio.abc.Stream:
        return proxy_end

    login = ev.BackendLogin(destuser="alice", password=Secret("pw"), starttls=True,
                            forwarded=ForwardedFields("sess", "127.0.0.9", 1, "127.0.0.1", 143))
    target = backend_mod.BackendTarget(host="backend.test", addresses=["127.0.0.1"],
                                       port=143, starttls_mode="yes", timeout=10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake_backend)
        with pytest.raises(backend_mod.BackendLoginError) as info:
            await backend_mod.login(target, lambda: imap.ClientConnection(login),
                                    contexts_trusting(ca), max_reconnects=0,
                                    connect=connect)
    assert info.value.kind == "AUTH"
    assert any(li.startswith(b"L LOGIN") for li in seen)   # the login went over TLS


async def test_backend_tls_name_mismatch_fails_the_login(ca: trustme.CA) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("other.test").configure_cert(server_ctx)
    proxy_end, backend_end = trio.testing.memory_stream_pair()

    async def fake_backend() -> None:
        tls = trio.SSLStream(backend_end, server_ctx, server_side=True)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError:
            pass

    async def connect(ip: str, port: int, source: str | None) -> trio.abc.Stream:
        return proxy_end

    login = ev.BackendLogin(destuser="alice", password=Secret("pw"), ssl=True)
    target = backend_mod.BackendTarget(host="backend.test", addresses=["127.0.0.1"],
                                       port=993, ssl_mode="yes", timeout=10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake_backend)
        with pytest.raises(backend_mod.BackendLoginError) as info:
            await backend_mod.login(target, lambda: imap.ClientConnection(login),
                                    contexts_trusting(ca), max_reconnects=0,
                                    connect=connect)
    # Final, not retried: the same backend will present the same certificate.
    assert info.value.kind == "INTERNAL"
    assert "certificate verification failed" in info.value.reason


async def test_a_refused_address_moves_on_to_the_next_resolved_one() -> None:
    """Better than Dovecot (which only ever tries the first address of a host name):
    each resolved address is tried in turn when a connect fails."""
    proxy_end, backend_end = trio.testing.memory_stream_pair()
    tried: list[str] = []

    async def connect(ip: str, port: int, source: str | None) -> trio.abc.Stream:
        tried.append(ip)
        if ip == "::1":
            raise ConnectionRefusedError(111, "Connection refused")
        return proxy_end

    async def fake_backend() -> None:
        buf = bytearray()
        await backend_end.send_all(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n")
        line = await read_line(backend_end, buf)
        assert line == b'L LOGIN "alice" "pw"'
        await backend_end.send_all(b"L OK Logged in\r\n")

    login = ev.BackendLogin(destuser="alice", password=Secret("pw"))
    target = backend_mod.BackendTarget(host="mail.test", addresses=["::1", "127.0.0.1"],
                                       port=143, timeout=10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake_backend)
        ok = await backend_mod.login(target, lambda: imap.ClientConnection(login),
                                     BackendContexts(None), max_reconnects=0,
                                     connect=connect)
    assert tried == ["::1", "127.0.0.1"]
    assert ok.ip == "127.0.0.1" and ok.reconnects == 0


async def test_reconnects_follow_dovecots_rules(autojump_clock: trio.testing.MockClock) -> None:
    """A refused backend is retried max_reconnects times, 1 s apart, then given up."""
    attempts: list[float] = []

    async def connect(ip: str, port: int, source: str | None) -> trio.abc.Stream:
        attempts.append(trio.current_time())
        raise ConnectionRefusedError(111, "Connection refused")

    login = ev.BackendLogin(destuser="alice", password=Secret("pw"))
    target = backend_mod.BackendTarget(host="127.0.0.1", addresses=["127.0.0.1"],
                                       port=143, timeout=30)
    with pytest.raises(backend_mod.BackendLoginError) as info:
        await backend_mod.login(target, lambda: imap.ClientConnection(login),
                                BackendContexts(None), max_reconnects=3, connect=connect)
    assert len(attempts) == 4
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert all(0.99 <= g <= 1.01 for g in gaps), gaps
    assert info.value.reason == "connect(127.0.0.1, 143) failed: Connection refused"
