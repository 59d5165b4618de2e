"""After login, for TLS sessions: bytes both ways, untouched, until either side closes.

(Plain-TCP sessions are relayed by io/splice_hub.py, with no task of their own.)

Owns: the byte pipe and its counters. No parsing, no per-line work: each direction is one
loop of large reads and writes. Either side closing (or failing) ends both directions, as
Dovecot's proxy does; nothing is injected into the client stream when the backend closes.
"""

from __future__ import annotations

import trio

# Large reads keep Python work per byte small; the buffer is allocated by the stream per
# read and freed at once, so an idle session holds none.
RELAY_CHUNK = 65536


class RelayResult:
    __slots__ = ("client_bytes", "server_bytes", "closed_by", "error", "last_activity")

    def __init__(self, now: float | None = None) -> None:
        self.client_bytes = 0      # client → server ("in=" in Dovecot's log)
        self.server_bytes = 0      # server → client ("out=")
        self.closed_by = ""        # "client" | "server" | "proxy"
        self.error = ""
        self.last_activity = trio.current_time() if now is None else now


async def _pump(src: trio.abc.ReceiveStream, dst: trio.abc.SendStream, result: RelayResult,
                side: str, done: trio.CancelScope) -> None:
    try:
        while True:
            data = await src.receive_some(RELAY_CHUNK)
            if not data:
                break
            await dst.send_all(data)
            result.last_activity = trio.current_time()
            if side == "client":
                result.client_bytes += len(data)
            else:
                result.server_bytes += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
        result.error = str(e) or type(e).__name__
    if not result.closed_by:
        result.closed_by = side
    done.cancel()


async def relay(client: trio.abc.Stream, server: trio.abc.Stream,
                client_pending: bytes = b"", server_pending: bytes = b"") -> RelayResult:
    """Pump both directions until one ends, then close both. `client_pending` are bytes the client sent
    behind its login command (they go to the server first); `server_pending` are bytes the
    backend sent behind its login reply."""
    result = RelayResult()
    try:
        if client_pending:
            await server.send_all(client_pending)
            result.client_bytes += len(client_pending)
        if server_pending:
            await client.send_all(server_pending)
            result.server_bytes += len(server_pending)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump, client, server, result, "client", nursery.cancel_scope)
            nursery.start_soon(_pump, server, client, result, "server", nursery.cancel_scope)
    finally:
        # One side ended: the other is closed at once (no half-open sessions), and a
        # cancelled relay (kick, shutdown) closes both.
        await trio.aclose_forcefully(client)
        await trio.aclose_forcefully(server)
    return result
