"""atheris target: arbitrary backend bytes into ``imap.ClientConnection``.

The client role never raises on backend input: every fault is a ``BackendLoginFailed``
event. Each input is fed whole and byte by byte and both must give the same events and
the same bytes written to the backend. The first byte picks the BackendLogin options.

    python3 fuzz/fuzz_imap_client.py -max_total_time=60 [corpus_dir ...]
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from mailproxy.protocols import (
        NEED_DATA,
        BackendLoggedIn,
        BackendLogin,
        BackendLoginFailed,
        ForwardedFields,
        Secret,
        StartTLSRequired,
        imap,
    )

FWD = ForwardedFields("sess", "192.0.2.1", 1, "192.0.2.2", 143,
                      forward=(("x", "a\r\nb"),))
MECHS = (None, "PLAIN", "LOGIN", "XOAUTH2")


def make(config: int) -> imap.ClientConnection:
    return imap.ClientConnection(BackendLogin(
        "alice", Secret("p\u00e4ss"), mechanism=MECHS[config & 3],
        starttls=bool(config & 4), nopipelining=bool(config & 8),
        client_sent_capability=bool(config & 16), master_user="m" if config & 32 else None,
        forwarded=FWD if config & 64 else None))


def drive(config: int, chunks: list[bytes]) -> tuple[list[object], bytes]:
    conn = make(config)
    events: list[object] = []
    out = bytearray()
    done = False
    for chunk in chunks + [b""]:
        conn.receive_data(chunk)
        while not done:
            ev = conn.next_event()
            out += conn.data_to_send()
            if len(conn._reader) > 4096:
                raise AssertionError("buffer over its limit")
            if ev is NEED_DATA:
                break
            events.append(ev)
            if isinstance(ev, (BackendLoggedIn, BackendLoginFailed)):
                done = True   # later chunks still arrive: after a success they are relayed
            elif isinstance(ev, StartTLSRequired):
                # where the handshake falls depends on the split: compare up to here
                conn.tls_started()
                if conn.trailing_data():
                    raise AssertionError("bytes after STARTTLS survived the handshake")
                return events, bytes(out) + conn.data_to_send()
    if not done:
        raise AssertionError("EOF did not end the login")
    if isinstance(events[-1], BackendLoggedIn):
        out += b"|" + conn.trailing_data()
    return events, bytes(out)


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    config, payload = data[0], data[1:]
    whole = drive(config, [payload])
    bytewise = drive(config, [payload[i:i + 1] for i in range(len(payload))])
    if whole != bytewise:
        raise AssertionError(f"whole {whole!r} != bytewise {bytewise!r}")


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
