"""The daemon's lifetime as an operator drives it: SIGTERM drain, SIGHUP reload, workers."""

from __future__ import annotations

import imaplib
import os
import signal
import time
from collections.abc import Iterator

import pytest

from tests.support.dovecot import DEFAULT_USERS, DovecotBackend
from tests.support.proxy import MailProxy


@pytest.fixture(scope="module")
def backend(require_dovecot: None) -> Iterator[DovecotBackend]:
    dc = DovecotBackend(DEFAULT_USERS, trusted_networks=["127.0.0.0/8"], auth_failure_delay=0)
    dc.start()
    try:
        yield dc
    finally:
        dc.stop()


def static(fields: str) -> str:
    return f'[[passdb]]\ndriver = "static"\nargs = "{fields}"\n'


def route(backend: DovecotBackend) -> str:
    return f"proxy=y host=127.0.0.1 port={backend.imap_port} nopassword=y"


def test_sigterm_lets_sessions_drain_then_exits_0(backend: DovecotBackend) -> None:
    proxy = MailProxy(static(route(backend)), top="shutdown_grace = 5").start()
    try:
        imap = imaplib.IMAP4("127.0.0.1", proxy.port, timeout=10)
        imap.login("alice", "alicepw")
        proxy.signal(signal.SIGTERM)
        proxy.wait_for_log("sessions draining")
        # The established session keeps working during the grace period ...
        assert imap.noop()[0] == "OK"
        # ... while new connections are no longer accepted.
        with pytest.raises(OSError):
            imaplib.IMAP4("127.0.0.1", proxy.port, timeout=3)
        imap.logout()
        started = time.monotonic()
        assert proxy._proc is not None
        assert proxy._proc.wait(10) == 0
        assert time.monotonic() - started < 4    # left as soon as the last session did
    finally:
        proxy.stop()


def test_sigterm_ends_sessions_still_open_after_the_grace(backend: DovecotBackend) -> None:
    proxy = MailProxy(static(route(backend)), top="shutdown_grace = 1").start()
    try:
        imap = imaplib.IMAP4("127.0.0.1", proxy.port, timeout=10)
        imap.login("alice", "alicepw")
        proxy.signal(signal.SIGTERM)
        assert proxy._proc is not None and proxy._proc.wait(10) == 0
        with pytest.raises((imaplib.IMAP4.abort, OSError)):
            imap.noop()
        assert "Disconnected by proxy: Process shutting down" in proxy.log_text()
    finally:
        proxy.stop()


def test_sighup_reloads_passdbs_without_dropping_sessions(backend: DovecotBackend) -> None:
    with MailProxy(static(route(backend))) as proxy:
        imap = imaplib.IMAP4("127.0.0.1", proxy.port, timeout=10)
        imap.login("alice", "alicepw")
        text = proxy.config_path.read_text()
        proxy.config_path.write_text(text.replace(route(backend),
                                                  "nopassword=y nologin=y reason=Reloaded."))
        proxy.signal(signal.SIGHUP)
        proxy.wait_for_log("config: reloaded")
        assert imap.noop()[0] == "OK"          # the established session is untouched
        fresh = imaplib.IMAP4("127.0.0.1", proxy.port, timeout=10)
        with pytest.raises(imaplib.IMAP4.error, match=r"\[CONTACTADMIN\] Reloaded\."):
            fresh.login("bob", "bobpw")
        fresh.logout()
        imap.logout()


def test_a_broken_config_on_sighup_keeps_the_old_one(backend: DovecotBackend) -> None:
    with MailProxy(static(route(backend))) as proxy:
        good = proxy.config_path.read_text()
        proxy.config_path.write_text(good + "\nbogus_key = 1\n")
        proxy.signal(signal.SIGHUP)
        text = proxy.wait_for_log("reload failed")
        assert f"{proxy.config_path}:" in text and "bogus_key: unknown key" in text
        assert "Traceback" not in text
        imap = imaplib.IMAP4("127.0.0.1", proxy.port, timeout=10)
        assert imap.login("alice", "alicepw")[0] == "OK"
        imap.logout()


def test_workers_share_the_listeners(backend: DovecotBackend) -> None:
    with MailProxy(static(route(backend)), top="workers = 2") as proxy:
        proxy.wait_for_log("worker 0: listening on")
        proxy.wait_for_log("worker 1: listening on")
        for _ in range(12):
            imap = imaplib.IMAP4("127.0.0.1", proxy.port, timeout=10)
            assert imap.login("alice", "alicepw")[0] == "OK"
            imap.logout()
        proxy.wait_for_log("Started proxying")
        assert proxy.stop() == 0


def test_quiet_workers_take_new_sessions_in_one_process(backend: DovecotBackend) -> None:
    """io/steering.py in the daemon: once the workers have settled, every new session
    (its client and backend sockets) lands in the same worker process."""
    with MailProxy(static(route(backend)), top='workers = 2\nlog_level = "debug"') as proxy:
        proxy.wait_for_log("new connections to one worker")
        assert proxy._proc is not None
        workers = [int(p) for p in open(
            f"/proc/{proxy._proc.pid}/task/{proxy._proc.pid}/children").read().split()]
        assert len(workers) == 2
        sessions = []
        cpus = sorted(os.sched_getaffinity(0))
        try:
            for i in range(8):     # the backend allows 10 per user and IP
                # From each CPU in turn: spread, SO_INCOMING_CPU would give each worker
                # the connections made on its own CPU.
                os.sched_setaffinity(0, {cpus[i % len(cpus)]})
                imap = imaplib.IMAP4("127.0.0.1", proxy.port, timeout=10)
                assert imap.login("alice", "alicepw")[0] == "OK"
                sessions.append(imap)
            os.sched_setaffinity(0, cpus)
            held = sorted(_clients_held(w, proxy.port) for w in workers)
            assert held == [0, 8], held
        finally:
            os.sched_setaffinity(0, cpus)
            for imap in sessions:
                imap.logout()
        assert proxy.stop() == 0


def test_a_listener_added_on_sighup_that_cannot_bind_is_logged_and_skipped(
        backend: DovecotBackend) -> None:
    import socket
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    try:
        with MailProxy(static(route(backend))) as proxy:
            proxy.config_path.write_text(
                proxy.config_path.read_text()
                + f'\n[[listener]]\nprotocol = "imap"\nbind = "127.0.0.1:{taken}"\n'
                  'tls = "none"\n')
            proxy.signal(signal.SIGHUP)
            text = proxy.wait_for_log("config: reloaded")
            assert (f"listener.bind: bind(127.0.0.1, {taken}) failed: Address already in use"
                    in text)
            assert "Traceback" not in text
            imap = imaplib.IMAP4("127.0.0.1", proxy.port, timeout=10)   # the old one serves
            assert imap.login("alice", "alicepw")[0] == "OK"
            imap.logout()
    finally:
        holder.close()


def _clients_held(pid: int, port: int) -> int:
    """Established client connections to `port` whose socket the process holds."""
    import os
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in open(table).read().splitlines()[1:]:
            f = row.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "01":
                inodes.add(f"socket:[{f[9]}]")
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}") in inodes
        except OSError:
            pass
    return n


def _kernel_at_least(major: int, minor: int) -> bool:
    import platform
    import re
    m = re.match(r"(\d+)\.(\d+)", platform.release())
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (major, minor)


@pytest.mark.skipif(len(__import__("os").sched_getaffinity(0)) < 2,
                    reason="needs 2 CPUs to pin clients to (this machine has 1)")
@pytest.mark.skipif(not _kernel_at_least(6, 1),
                    reason="needs Linux 6.1+ (SO_REUSEPORT honouring SO_INCOMING_CPU)")
def test_each_worker_takes_the_connections_arriving_on_its_cpu(
        backend: DovecotBackend) -> None:
    # Loopback packets are processed on the connecting thread's CPU, so a client pinned
    # to one CPU stands for a NIC queue serving that CPU: all of its sessions go to one
    # worker, and a client on the other CPU goes to the other worker. (This is the
    # workers' spread mode, where they start: io/steering.py sends everything to one
    # worker only after HOLD = 2 s of quiet, and these ten logins take well under that.)
    import os
    cpus = sorted(os.sched_getaffinity(0))[:2]
    with MailProxy(static(route(backend)), top="workers = 2") as proxy:
        for index in (0, 1):     # both: until then the one listening takes everything
            proxy.wait_for_log(f"worker {index}: listening on")
        assert proxy._proc is not None
        workers = [int(p) for p in open(
            f"/proc/{proxy._proc.pid}/task/{proxy._proc.pid}/children").read().split()]
        assert len(workers) == 2
        owner = []
        sessions = []
        saved = os.sched_getaffinity(0)
        try:
            for cpu in cpus:
                before = [_clients_held(w, proxy.port) for w in workers]
                os.sched_setaffinity(0, {cpu})
                for _ in range(5):
                    imap = imaplib.IMAP4("127.0.0.1", proxy.port, timeout=10)
                    assert imap.login("alice", "alicepw")[0] == "OK"
                    sessions.append(imap)
                os.sched_setaffinity(0, saved)
                gained = [_clients_held(w, proxy.port) - b for w, b in zip(workers, before)]
                assert sorted(gained) == [0, 5], gained      # all five on one worker
                owner.append(gained.index(5))
        finally:
            os.sched_setaffinity(0, saved)
            for imap in sessions:
                imap.logout()
        assert owner[0] != owner[1]
