"""EarlyReplies (io/backend.py): a backend login is not woken for the ID reply that a
backend sends before its answer to the login, once that reply has been seen.

Real loopback sockets (SO_RCVLOWAT is the kernel's), a Trio backend that answers like
Dovecot's imap-login: the pipelined ID at once, the LOGIN a little later (its auth
lookup). Wake-ups are counted with a Trio instrument on the task doing the login.
"""

from __future__ import annotations

import socket
import sys

import pytest
import trio

from mailproxy.io import backend as backend_mod
from mailproxy.io.tls import BackendContexts
from mailproxy.protocols import _events as ev
from mailproxy.protocols import imap
from mailproxy.protocols._secret import Secret
from mailproxy.protocols.forwarding import ForwardedFields
from tests.support.steps import StepCounter

pytestmark = pytest.mark.skipif(sys.platform != "linux",
                                reason="EarlyReplies needs Linux's SO_RCVLOWAT wake-ups")

BANNER = b"* OK [CAPABILITY IMAP4rev1 ID AUTH=PLAIN] ready\r\n"
ID_REPLY = b'* ID ("name" "Dovecot")\r\nI OK ID completed.\r\n'
LOGIN_OK = b"L OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"
STATE = "id+login/banner"       # the login's state while it waits for those replies


class Backend:
    """Accepts logins on 127.0.0.1: banner, then for `I ID ... L LOGIN ...` the ID reply
    at once and, `delay` later, the login reply. `id_reply`/`login_reply` can change
    between logins; `close_after_id` hangs up instead of answering the login."""

    def __init__(self) -> None:
        self.id_reply, self.login_reply = ID_REPLY, LOGIN_OK
        self.delay = 0.05
        self.close_after_id = False
        self.port = 0
        self.logins = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(BANNER)
            buf = b""
            while b"L LOGIN" not in buf or not buf.endswith(b"\r\n"):
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
            assert buf.startswith(b"I ID ")      # pipelined: one write, ID first
            await stream.send_all(self.id_reply)
            if self.close_after_id:
                return
            await trio.sleep(self.delay)
            await stream.send_all(self.login_reply)
            self.logins += 1
            await stream.receive_some(65536)     # until the proxy closes


async def log_in(backend: Backend, early: backend_mod.EarlyReplies | None,
                 ) -> tuple[backend_mod.BackendLoginOK, int]:
    """One backend login; the steps the calling task took for it."""
    login = ev.BackendLogin(destuser="alice", password=Secret("pw"),
                            forwarded=ForwardedFields("sess", "127.0.0.9", 1,
                                                      "127.0.0.1", 143))
    target = backend_mod.BackendTarget(host="127.0.0.1", addresses=["127.0.0.1"],
                                       port=backend.port, timeout=5)
    counter = StepCounter(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(counter)
    try:
        ok = await backend_mod.login(target, lambda: imap.ClientConnection(login),
                                     BackendContexts(None), max_reconnects=0,
                                     early=early)
    finally:
        trio.lowlevel.remove_instrument(counter)
    return ok, counter.steps


def rcvlowat(stream: object) -> int:
    return stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)  # type: ignore


async def test_a_learned_early_reply_spares_the_login_a_wakeup() -> None:
    backend = Backend()
    early = backend_mod.EarlyReplies()
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.serve)
        nursery.start_soon(early.sweep)
        await trio.sleep(0)                        # the sweep task is running

        plain, plain_steps = await log_in(backend, None)
        await plain.stream.aclose()
        first, _ = await log_in(backend, early)    # learns the ID reply's length
        await first.stream.aclose()
        assert early.learned == {("127.0.0.1", backend.port, STATE): len(ID_REPLY)}

        second, steps = await log_in(backend, early)
        assert steps == plain_steps - 1            # not woken for the ID reply
        assert isinstance(second.event, ev.BackendLoggedIn)
        assert rcvlowat(second.stream) == 1        # the relay is woken by any byte
        assert not early.waiting
        await second.stream.aclose()
        nursery.cancel_scope.cancel()
    assert backend.logins == 3


async def test_no_mark_is_raised_without_the_sweep() -> None:
    """The sweep is the safety net: a library user who does not run it waits as before."""
    backend = Backend()
    early = backend_mod.EarlyReplies()
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.serve)
        plain, plain_steps = await log_in(backend, None)
        await plain.stream.aclose()
        for _ in range(2):
            ok, steps = await log_in(backend, early)
            await ok.stream.aclose()
            assert steps == plain_steps
        assert early.learned        # learned all the same, for when the sweep runs
        nursery.cancel_scope.cancel()


async def test_a_shorter_early_reply_is_rescued_by_the_sweep() -> None:
    """A backend whose ID reply shrank (reconfigured) sends less than the raised mark
    in all: the sweep lowers it, the login goes through, and the old length is
    forgotten."""
    backend = Backend()
    early = backend_mod.EarlyReplies()
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.serve)
        nursery.start_soon(early.sweep)
        await trio.sleep(0)
        key = ("127.0.0.1", backend.port, STATE)
        early.learn(key, 1000)                   # far more than will ever come
        backend.id_reply, backend.login_reply = b"I OK\r\n", b"L OK Logged in\r\n"
        backend.delay = 0
        started = trio.current_time()
        ok, _ = await log_in(backend, early)
        waited = trio.current_time() - started
        assert isinstance(ok.event, ev.BackendLoggedIn)
        # at most two sweep intervals; generous slack for a loaded machine
        assert waited >= backend_mod.EARLY_SWEEP * 0.5
        assert waited < 2 * backend_mod.EARLY_SWEEP + 2
        assert rcvlowat(ok.stream) == 1
        await ok.stream.aclose()
        # forgotten, then learned again from this backend's new, shorter reply
        ok, _ = await log_in(backend, early)
        await ok.stream.aclose()
        assert early.learned.get(key, 0) <= len(b"I OK\r\n")
        nursery.cancel_scope.cancel()


async def test_a_backend_hanging_up_wakes_a_raised_wait_at_once() -> None:
    """EOF wakes the login whatever the mark: the failure is Dovecot's, not a timeout
    (no sweep runs here, so nothing else could end the wait)."""
    backend = Backend()
    early = backend_mod.EarlyReplies()
    early.running = True                         # marks raised, no sweep to rescue
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.serve)
        early.learn(("127.0.0.1", backend.port, STATE), len(ID_REPLY))
        backend.close_after_id = True
        with pytest.raises(backend_mod.BackendLoginError) as info:
            await log_in(backend, early)
        assert info.value.kind == "CONNECT"
        assert info.value.reason.startswith("Disconnected by server")
        assert not early.waiting
        nursery.cancel_scope.cancel()
